//! The manifest contract: good manifests resolve with the documented defaults, and each
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report
//! broken manifest in the table gets its own message at the right line and column.

use berth_manifest::*;
use std::path::Path;
use std::time::Duration;

fn source(text: &str) -> ManifestSource<'_> {
    ManifestSource {
        file: "berth.toml",
        text,
        base_dir: Path::new("/srv/app"),
    }
}

const FULL: &str = r#"
app = "memoai"

[services.web]
build = { context = ".", dockerfile = "Dockerfile", args = { PY = 3.12 }, target = "prod" }
port = 8000
env = { LOG_LEVEL = "info", WORKERS = 4 }
secrets = ["JWT_SECRET_KEY", "CLAUDE_API_KEY"]
secret_files = ["TLS_KEY"]
volumes = ["data:/app/data", "./config:/app/config:ro"]
release_command = "python manage.py migrate"
healthcheck = { path = "/health", interval = "1s", timeout = "5s", start_timeout = "60s" }
route = { domains = ["Memo.example.com"], path = "/api/" }
memory = "1g"
cpus = 0.5
replicas = 2
depends_on = ["postgres"]

[services.worker]
image = "ghcr.io/org/worker:1.2"
command = ["python", "worker.py"]
gpus = "all"
depends_on = ["web"]

[accessories.postgres]
image = "postgres:16"
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["POSTGRES_PASSWORD"]
publish = ["127.0.0.1:5432:5432"]
port = 5432

[deploy]
keep_releases = 3
drain_timeout = "10s"

[logging]
max_size = "20m"
max_files = 5

[environments.staging]
services.web.route.domains = ["staging.memo.example.com"]
services.web.replicas = 1
"#;

#[test]
fn a_full_manifest_resolves_with_defaults_filled_in() {
    let m = load(source(FULL), None).unwrap();
    assert_eq!(m.app, "memoai");
    let web = &m.services["web"];
    assert_eq!(web.role(), Role::Web);
    assert_eq!(web.port, Some(8000));
    assert_eq!(web.replicas, 2);
    assert_eq!(web.memory, Some(1 << 30));
    assert_eq!(web.cpus, Some(0.5));
    assert_eq!(web.env["WORKERS"], "4");
    assert_eq!(
        web.release_command.as_deref().unwrap(),
        ["python", "manage.py", "migrate"]
    );
    assert_eq!(web.route.as_ref().unwrap().domains, ["memo.example.com"]);
    assert_eq!(web.route.as_ref().unwrap().path, "/api");
    assert_eq!(web.stop_timeout, Duration::from_secs(10));
    assert_eq!(
        web.logging,
        Logging {
            driver: "json-file".into(),
            max_size: 20 << 20,
            max_files: 5
        }
    );
    assert_eq!(
        web.healthcheck.probe,
        Probe::Http {
            path: "/health".into(),
            status: StatusRange { min: 200, max: 299 }
        }
    );
    assert_eq!(web.healthcheck.interval, Duration::from_secs(1));
    match &web.source {
        ImageSource::Build(b) => {
            assert_eq!(b.context, Path::new("/srv/app"));
            assert_eq!(b.args["PY"], "3.12");
            assert_eq!(b.target.as_deref(), Some("prod"));
        }
        other => panic!("expected a build, got {other:?}"),
    }
    assert_eq!(
        web.volumes[1].source,
        VolumeSource::Bind("/srv/app/config".into())
    );
    assert_eq!(
        web.secrets,
        vec![
            SecretRef {
                name: "JWT_SECRET_KEY".into(),
                delivery: SecretDelivery::Env
            },
            SecretRef {
                name: "CLAUDE_API_KEY".into(),
                delivery: SecretDelivery::Env
            },
            SecretRef {
                name: "TLS_KEY".into(),
                delivery: SecretDelivery::File
            },
        ]
    );
    let worker = &m.services["worker"];
    assert_eq!(worker.role(), Role::Worker);
    assert_eq!(worker.gpus, Some(Gpus::All));
    assert_eq!(worker.healthcheck.probe, Probe::Running);
    let pg = &m.accessories["postgres"];
    assert_eq!(pg.role(), Role::Accessory);
    assert_eq!(pg.healthcheck.probe, Probe::Tcp);
    assert_eq!(pg.publish[0].host_port, 5432);
    assert_eq!(m.deploy.keep_releases, 3);
    assert_eq!(m.deploy.drain_timeout, Duration::from_secs(10));
    assert_eq!(m.deploy.release_timeout, Duration::from_secs(600));
    assert_eq!(
        m.secret_names(),
        [
            "CLAUDE_API_KEY",
            "JWT_SECRET_KEY",
            "POSTGRES_PASSWORD",
            "TLS_KEY"
        ]
    );
    assert_eq!(m.service_start_order(), ["web", "worker"]);
}

#[test]
fn an_environment_overlay_merges_tables_and_replaces_values() {
    let m = load(source(FULL), Some("staging")).unwrap();
    assert_eq!(
        m.app, "memoai-staging",
        "an overlay that does not name the app gets its own instance"
    );
    assert_eq!(m.environment.as_deref(), Some("staging"));
    let web = &m.services["web"];
    assert_eq!(
        web.route.as_ref().unwrap().domains,
        ["staging.memo.example.com"]
    );
    assert_eq!(
        web.route.as_ref().unwrap().path,
        "/api",
        "untouched keys of a merged table stay"
    );
    assert_eq!(web.replicas, 1);
    assert_eq!(web.port, Some(8000));
}

#[test]
fn an_overlay_may_name_the_app() {
    let text = "app = \"a\"\n[services.web]\nimage = \"x\"\n[environments.prod]\napp = \"a\"\n";
    assert_eq!(load(source(text), Some("prod")).unwrap().app, "a");
}

#[test]
fn check_all_validates_every_environment() {
    let text = "app = \"a\"\n[services.web]\nimage = \"x\"\n[environments.ok]\nservices.web.replicas = 2\n[environments.bad]\nservices.web.replicas = 0\n";
    let error = check_all(source(text)).unwrap_err();
    let located = error.located();
    assert_eq!(located.len(), 1);
    assert_eq!((located[0].line, located[0].column), (Some(7), Some(25)));
    assert!(
        located[0]
            .message
            .contains("`replicas` = 0 is out of range"),
        "{}",
        located[0].message
    );
}

#[test]
fn the_bundled_example_manifest_is_valid() {
    let text = include_str!("../../../examples/hello/berth.toml");
    let all = check_all(source(text)).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].services["web"].role(), Role::Web);
    assert_eq!(all[0].services["worker"].role(), Role::Worker);
}

/// (what, manifest, line, column, message fragment, help fragment)
const BROKEN: &[(&str, &str, usize, usize, &str, &str)] = &[
    (
        "toml syntax",
        "app = \"a\"\n[services.web\n",
        2,
        14,
        "unclosed table, expected `]`",
        "",
    ),
    (
        "unknown top-level key",
        "app = \"a\"\nservice = {}\n",
        2,
        1,
        "unknown key `service`",
        "did you mean `services`?",
    ),
    (
        "unknown service key",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nprot = 80\n",
        4,
        1,
        "unknown key `prot`",
        "did you mean `port`?",
    ),
    (
        "unknown healthcheck key",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nhealthcheck = { paht = \"/\" }\n",
        5,
        17,
        "unknown key `paht`",
        "did you mean `path`?",
    ),
    (
        "missing app",
        "[services.web]\nimage = \"x\"\n",
        1,
        1,
        "no `app` name",
        "app = \"myapp\"",
    ),
    (
        "bad app name",
        "app = \"My App\"\n[services.web]\nimage = \"x\"\n",
        1,
        7,
        "not a valid app name",
        "lower-case",
    ),
    (
        "no services",
        "app = \"a\"\n",
        1,
        1,
        "defines no services",
        "[services.web]",
    ),
    (
        "image and build",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nbuild = \".\"\n",
        4,
        9,
        "both `image` and `build`",
        "keep one",
    ),
    (
        "neither image nor build",
        "app = \"a\"\n[services.web]\nport = 80\n",
        2,
        11,
        "needs `image` or `build`",
        "build = \".\"",
    ),
    (
        "bad image",
        "app = \"a\"\n[services.web]\nimage = \"Org/App\"\n",
        3,
        9,
        "not a valid image reference",
        "postgres:16",
    ),
    (
        "port out of range",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 70000\n",
        4,
        8,
        "port 70000 is out of range",
        "",
    ),
    (
        "port as string",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = \"80\"\n",
        4,
        8,
        "invalid type: string \"80\", expected a whole number",
        "",
    ),
    (
        "bad duration",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nhealthcheck = { path = \"/h\", interval = \"5 parsecs\" }\n",
        5,
        41,
        "`healthcheck.interval` is not a duration: unknown unit `parsecs`",
        "30s",
    ),
    (
        "duration without unit",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nstop_timeout = \"30\"\n",
        4,
        16,
        "has no unit",
        "30s",
    ),
    (
        "bad size",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nmemory = \"lots\"\n",
        4,
        10,
        "`memory` is not a size",
        "512m",
    ),
    (
        "memory too small",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nmemory = \"1m\"\n",
        4,
        10,
        "below Docker's minimum",
        "",
    ),
    (
        "dangling depends_on",
        "app = \"a\"\n[services.web]\nimage = \"x\"\ndepends_on = [\"postgress\"]\n[accessories.postgres]\nimage = \"postgres:16\"\n",
        4,
        15,
        "depends on `postgress`, which is not defined",
        "did you mean `postgres`?",
    ),
    (
        "dependency cycle",
        "app = \"a\"\n[services.a]\nimage = \"x\"\ndepends_on = [\"b\"]\n[services.b]\nimage = \"x\"\ndepends_on = [\"a\"]\n",
        7,
        15,
        "forms a cycle: a -> b -> a",
        "",
    ),
    (
        "accessory depends on service",
        "app = \"a\"\n[services.web]\nimage = \"x\"\n[accessories.db]\nimage = \"x\"\ndepends_on = [\"web\"]\n",
        6,
        15,
        "accessory `db` depends on service `web`",
        "accessories start before services",
    ),
    (
        "name clash",
        "app = \"a\"\n[services.db]\nimage = \"x\"\n[accessories.db]\nimage = \"x\"\n",
        4,
        14,
        "`db` is both a service and an accessory",
        "rename one",
    ),
    (
        "route without port",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nroute = { domains = [\"a.com\"] }\n",
        4,
        9,
        "has a `route` but no `port`",
        "port = 8000",
    ),
    (
        "route clash",
        "app = \"a\"\n[services.a]\nimage = \"x\"\nport = 80\nroute = { domains = [\"x.com\"] }\n[services.b]\nimage = \"x\"\nport = 80\nroute = { domains = [\"x.com\"] }\n",
        9,
        9,
        "route clash: x.com/ is routed to both `a` and `b`",
        "",
    ),
    (
        "domain with scheme",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { domains = [\"https://a.com\"] }\n",
        5,
        22,
        "not a valid domain",
        "without a scheme",
    ),
    (
        "published port clash",
        "app = \"a\"\n[accessories.a]\nimage = \"x\"\npublish = [\"5432\"]\n[accessories.b]\nimage = \"x\"\npublish = [\"5432:5432\"]\n",
        7,
        12,
        "port clash: host port 5432 is published by both `a` and `b`",
        "another host port",
    ),
    (
        "service publishes",
        "app = \"a\"\n[services.web]\nimage = \"x\"\npublish = [\"80:80\"]\n",
        4,
        12,
        "services cannot publish host ports",
        "side by side",
    ),
    (
        "bad volume",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nvolumes = [\"data:app\"]\n",
        4,
        12,
        "must be absolute",
        "data:/app/data",
    ),
    (
        "health path without slash",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nhealthcheck = { path = \"health\" }\n",
        5,
        24,
        "must start with `/`",
        "\"/health\"",
    ),
    (
        "two kinds of health check",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nhealthcheck = { path = \"/h\", tcp = true }\n",
        5,
        15,
        "more than one of `path`, `tcp` and `command`",
        "",
    ),
    (
        "http check without port",
        "app = \"a\"\n[services.w]\nimage = \"x\"\nhealthcheck = { path = \"/h\" }\n",
        4,
        24,
        "needs the service's `port`",
        "",
    ),
    (
        "bad status",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nhealthcheck = { path = \"/h\", status = \"ok\" }\n",
        5,
        39,
        "`healthcheck.status` is not valid",
        "2xx",
    ),
    (
        "release command on accessory",
        "app = \"a\"\n[accessories.db]\nimage = \"x\"\nrelease_command = \"migrate\"\n",
        4,
        19,
        "accessories do not run release commands",
        "",
    ),
    (
        "accessory replicas",
        "app = \"a\"\n[accessories.db]\nimage = \"x\"\nreplicas = 2\n",
        4,
        12,
        "exactly one container",
        "",
    ),
    (
        "zero replicas",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nreplicas = 0\n",
        4,
        12,
        "`replicas` = 0 is out of range",
        "",
    ),
    (
        "bad gpus",
        "app = \"a\"\n[services.llm]\nimage = \"x\"\ngpus = \"some\"\n",
        4,
        8,
        "`gpus` must be \"all\" or a number",
        "",
    ),
    (
        "bad restart",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nrestart = \"sometimes\"\n",
        4,
        11,
        "not a restart policy",
        "unless-stopped",
    ),
    (
        "secret and env",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nenv = { KEY = \"v\" }\nsecrets = [\"KEY\"]\n",
        5,
        12,
        "both a plain `env` value and a secret",
        "",
    ),
    (
        "bad secret name",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nsecrets = [\"jwt-key\"]\n",
        4,
        12,
        "not a valid secret name",
        "JWT_SECRET_KEY",
    ),
    (
        "command of wrong type",
        "app = \"a\"\n[services.web]\nimage = \"x\"\ncommand = 5\n",
        4,
        11,
        "expected a string or a list of strings",
        "",
    ),
    (
        "unclosed quote",
        "app = \"a\"\n[services.web]\nimage = \"x\"\ncommand = \"sh -c 'oops\"\n",
        4,
        11,
        "cannot be split into words",
        "as a list",
    ),
    (
        "duplicate key",
        "app = \"a\"\napp = \"b\"\n[services.web]\nimage = \"x\"\n",
        2,
        1,
        "duplicate key",
        "",
    ),
    (
        "keep_releases zero",
        "app = \"a\"\n[services.web]\nimage = \"x\"\n[deploy]\nkeep_releases = 0\n",
        5,
        17,
        "`deploy.keep_releases` = 0 is out of range",
        "",
    ),
    (
        "build of wrong type",
        "app = \"a\"\n[services.web]\nbuild = 5\n",
        3,
        9,
        "expected a context directory or a build table",
        "",
    ),
    (
        "typo inside build",
        "app = \"a\"\n[services.web]\nbuild = { contxt = \".\" }\n",
        3,
        11,
        "unknown key `contxt`",
        "did you mean `context`?",
    ),
    (
        "bad tls mode",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { domains = [\"a.com\"], tls = \"on\" }\n",
        5,
        38,
        "`on` is not a TLS mode",
        "\"auto\"",
    ),
    (
        "wildcard without a certificate",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { domains = [\"*.a.com\"] }\n",
        5,
        22,
        "needs a wildcard certificate",
        "DNS-01",
    ),
    (
        "bad rate limit",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { rate_limit = \"60 per minute\" }\n",
        5,
        24,
        "`route.rate_limit` is not valid",
        "60/min",
    ),
    (
        "bad balance",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { balance = \"random\" }\n",
        5,
        21,
        "not a balancing strategy",
        "least-connections",
    ),
    (
        "bad max body",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { max_body = \"big\" }\n",
        5,
        22,
        "`route.max_body` is not a size",
        "512m",
    ),
    (
        "backup of an unknown service",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { sqlite = { service = \"wbe\", path = \"/data/app.db\" } }\n",
        7,
        33,
        "no service or accessory `wbe`",
        "did you mean `web`?",
    ),
    (
        "sqlite file outside a volume",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { sqlite = { service = \"web\", path = \"/app/app.db\" } }\n",
        7,
        47,
        "`/app/app.db` is not on a volume of `web`",
        "lost on every deploy",
    ),
    (
        "relative sqlite path",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { sqlite = { path = \"app.db\" } }\n",
        7,
        30,
        "must be absolute",
        "/data/app.db",
    ),
    (
        "bad cron schedule",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { volume = { name = \"data\" } }\nschedule = \"every night\"\n",
        8,
        12,
        "is not a cron schedule",
        "0 3 * * *",
    ),
    (
        "unknown storage",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[storage.offsite]\npath = \"/mnt/b\"\n[backups.db]\nsource = { volume = { name = \"data\" } }\nto = [\"local\", \"ofsite\"]\n",
        10,
        16,
        "unknown storage `ofsite`",
        "did you mean `offsite`?",
    ),
    (
        "unknown source kind",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { sqlit = { path = \"/x\" } }\n",
        7,
        12,
        "unknown variant `sqlit`",
        "",
    ),
    (
        "volume nobody mounts",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { volume = { name = \"uploads\" } }\n",
        7,
        30,
        "no service mounts a volume named `uploads`",
        "uploads:/app/uploads",
    ),
    (
        "database without a location",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { postgres = { database = \"app\" } }\n",
        7,
        10,
        "say where the postgres database is",
        "url = ",
    ),
    (
        "password in a postgres url",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { postgres = { url = \"postgres://u:pw@h/db\" } }\n",
        7,
        31,
        "holds a password",
        "password_secret",
    ),
    (
        "secret key as a recipient",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[encryption]\nrecipients = [\"AGE-SECRET-KEY-1QQQQ\"]\n",
        7,
        15,
        "is not an age recipient",
        "never put it in berth.toml",
    ),
    (
        "bucket missing",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[storage.offsite]\ns3 = { endpoint = \"https://x.example\" }\n",
        7,
        6,
        "missing field `bucket`",
        "",
    ),
    (
        "endpoint without a scheme",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[storage.offsite]\ns3 = { bucket = \"backups\", endpoint = \"s3.example.com\" }\n",
        7,
        39,
        "is not an endpoint URL",
        "https://",
    ),
    (
        "part size below the S3 minimum",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[storage.offsite]\ns3 = { bucket = \"backups\", part_size = \"1m\" }\n",
        7,
        40,
        "between 5m and 5g",
        "5 MiB",
    ),
    (
        "storage with a path and a bucket",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[storage.offsite]\npath = \"/mnt\"\ns3 = { bucket = \"backups\" }\n",
        6,
        1,
        "has both `path` and `s3`",
        "define two storages",
    ),
    (
        "negative keep count",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { volume = { name = \"data\" } }\nkeep = { daily = -1 }\n",
        8,
        18,
        "keep.daily = -1 is out of range",
        "0 to 10000",
    ),
    (
        "unknown keep key",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { volume = { name = \"data\" } }\nkeep = { days = 7 }\n",
        8,
        10,
        "unknown key `days`",
        "daily",
    ),
    (
        "s3 key in the manifest",
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nvolumes = [\"data:/data\"]\n[storage.offsite]\ns3 = { bucket = \"backups\", access_key_id_secret = \"AKIA/12+x\" }\n",
        7,
        51,
        "is not a valid secret name",
        "never goes in berth.toml",
    ),
    (
        "unknown deploy key",
        "app = \"a\"\n[services.web]\nimage = \"x\"\n[deploy]\ndrain = \"5s\"\n",
        5,
        1,
        "unknown key `drain`",
        "",
    ),
    (
        "unknown pull policy",
        "app = \"a\"\n[services.web]\nimage = \"x:1\"\npull = \"sometimes\"\n",
        4,
        8,
        "is not a pull policy",
        "\"missing\"",
    ),
    (
        "pull on a built service",
        "app = \"a\"\n[services.web]\nbuild = \".\"\npull = \"always\"\n",
        4,
        8,
        "`pull` applies to `image` only",
        "",
    ),
    (
        "registry server with a scheme",
        "app = \"a\"\n[services.web]\nimage = \"x:1\"\n[registry]\nserver = \"https://ghcr.io\"\nusername = \"me\"\n",
        5,
        10,
        "has a scheme",
        "without `https://`",
    ),
    (
        "registry password secret name",
        "app = \"a\"\n[services.web]\nimage = \"x:1\"\n[registry]\nserver = \"ghcr.io\"\nusername = \"me\"\npassword_secret = \"my token\"\n",
        7,
        19,
        "not a valid secret name",
        "never goes in berth.toml",
    ),
];

#[test]
fn every_broken_manifest_gets_its_own_message_at_its_location() {
    let mut failures = Vec::new();
    for (what, text, line, column, message, help) in BROKEN {
        let error = match load(source(text), None) {
            Ok(_) => {
                failures.push(format!("{what}: was accepted"));
                continue;
            }
            Err(e) => e,
        };
        let located = error.located();
        let first = &located[0];
        let ok = first.line == Some(*line)
            && first.column == Some(*column)
            && first.message.contains(message)
            && first.help.as_deref().unwrap_or("").contains(help);
        if !ok {
            failures.push(format!(
                "{what}: expected {line}:{column} `{message}` (help `{help}`), got {:?}:{:?} `{}` (help {:?})",
                first.line, first.column, first.message, first.help
            ));
        }
        // The rendered form always names file:line:column.
        assert!(
            error
                .to_string()
                .starts_with(&format!("error: berth.toml:{line}:"))
                || !failures.is_empty()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        BROKEN.len(),
        failures.join("\n")
    );
}

#[test]
fn an_unknown_environment_lists_the_defined_ones() {
    let error = load(source(FULL), Some("prod")).unwrap_err();
    let d = &error.located()[0];
    assert!(d.message.contains("environment `prod` is not defined"));
    assert_eq!(d.help.as_deref(), Some("defined environments: `staging`"));
}

#[test]
fn errors_in_an_overlay_point_into_the_overlay() {
    let text = "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\n[environments.staging]\nservices.web.prot = 81\n";
    assert!(load(source(text), None).is_ok());
    let error = load(source(text), Some("staging")).unwrap_err();
    let d = &error.located()[0];
    assert_eq!((d.line, d.column), (Some(6), Some(14)));
    assert!(d.message.contains("unknown key `prot`"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let text =
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 0\nreplicas = 0\nmemory = \"x\"\n";
    let error = load(source(text), None).unwrap_err();
    assert_eq!(error.diagnostics().len(), 3, "{error}");
}

#[test]
fn resolved_manifests_round_trip_through_json() {
    let m = load(source(FULL), None).unwrap();
    let json = serde_json::to_string(&m).unwrap();
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(m, back);
    assert_eq!(
        m.services["web"].fingerprint(),
        back.services["web"].fingerprint()
    );
}

#[test]
fn rendered_errors_read_like_a_compiler() {
    let text = "app = \"a\"\n[services.web]\nimage = \"x\"\nprot = 80\n";
    let rendered = load(source(text), None).unwrap_err().to_string();
    assert_eq!(
        rendered,
        "error: berth.toml:4:1: unknown key `prot`\n  |\n4 | prot = 80\n  | ^^^^\n  help: did you mean `port`?\n"
    );
}

#[test]
fn route_settings_resolve_with_defaults() {
    let text = r#"
app = "a"
[services.web]
image = "x"
port = 80
route = { domains = ["a.com"], path = "/api", strip_prefix = true, tls = { cert = "certs/a.pem", key = "/etc/a.key" }, hsts = false, max_body = "1g", response_timeout = "5m", rate_limit = "60/min", max_concurrent = 200, balance = "least-connections" }
[services.plain]
image = "x"
port = 80
route = { domains = ["b.com"] }
"#;
    let m = load(source(text), None).unwrap();
    let route = m.services["web"].route.clone().unwrap();
    assert!(route.strip_prefix);
    assert_eq!(
        route.tls,
        Tls::Files {
            cert: "/srv/app/certs/a.pem".into(),
            key: "/etc/a.key".into()
        }
    );
    assert!(route.redirect_http);
    assert!(!route.hsts);
    assert_eq!(route.max_body, 1 << 30);
    assert_eq!(route.response_timeout, Duration::from_secs(300));
    assert_eq!(
        route.rate_limit,
        Some(RateLimit {
            requests: 60,
            per: Duration::from_secs(60)
        })
    );
    assert_eq!(route.max_concurrent, Some(200));
    assert_eq!(route.balance, Balance::LeastConnections);
    let plain = m.services["plain"].route.clone().unwrap();
    assert_eq!(plain.max_concurrent, None);
    assert_eq!(plain.tls, Tls::Auto);
    assert_eq!(plain.max_body, 10 << 20);
    assert_eq!(plain.response_timeout, Duration::from_secs(60));
    assert_eq!(plain.rate_limit, None);
}

#[test]
fn a_route_login_resolves_and_broken_ones_are_named() {
    let text = r#"
app = "a"
[services.admin]
image = "x"
port = 80
route = { domains = ["admin.a.com"], auth = "berth" }
[services.db]
image = "x"
port = 80
route = { domains = ["db.a.com"], auth = { login = "berth", role = "deployer", two_factor = true } }
[services.open]
image = "x"
port = 80
route = { domains = ["a.com"] }
"#;
    let m = load(source(text), None).unwrap();
    let admin = m.services["admin"].route.clone().unwrap().auth.unwrap();
    assert_eq!((admin.role, admin.two_factor), (AuthRole::Viewer, false));
    let db = m.services["db"].route.clone().unwrap().auth.unwrap();
    assert_eq!((db.role, db.two_factor), (AuthRole::Deployer, true));
    assert_eq!(m.services["open"].route.clone().unwrap().auth, None);

    let basic = load(
        source(
            "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { domains = [\"a.com\"], auth = { login = \"basic\", users_secret = \"TOOL_USERS\" } }\n",
        ),
        None,
    )
    .unwrap();
    let auth = basic.services["web"].route.clone().unwrap().auth.unwrap();
    assert_eq!(auth.basic_users_secret.as_deref(), Some("TOOL_USERS"));

    for (route, wanted) in [
        (
            r#"{ domains = ["a.com"], auth = "oauth" }"#,
            "`oauth` is not a route login",
        ),
        (
            r#"{ domains = ["a.com"], auth = { login = "berth", role = "root" } }"#,
            "`root` is not a console role",
        ),
        (r#"{ auth = "berth" }"#, "must name its domains"),
        (
            r#"{ domains = ["a.com"], auth = { login = "berth", roles = "admin" } }"#,
            "roles",
        ),
        (
            r#"{ domains = ["a.com"], auth = { login = "basic" } }"#,
            "basic auth needs `users_secret`",
        ),
        (
            r#"{ domains = ["a.com"], auth = { login = "basic", users_secret = "T", role = "admin" } }"#,
            "`role` and `two_factor` go with login = \"berth\"",
        ),
        (
            r#"{ domains = ["a.com"], auth = { login = "berth", users_secret = "T" } }"#,
            "`users_secret` goes with login = \"basic\"",
        ),
    ] {
        let text =
            format!("app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = {route}\n");
        let error = load(source(&text), None).unwrap_err().to_string();
        assert!(error.contains(wanted), "{route}: {error}");
        assert!(error.contains(":5:"), "names the line: {error}");
    }
}

#[test]
fn a_concurrency_limit_out_of_range_is_named_with_its_place() {
    let text =
        "app = \"a\"\n[services.web]\nimage = \"x\"\nport = 80\nroute = { max_concurrent = 0 }\n";
    let error = load(source(text), None).unwrap_err().to_string();
    assert!(
        error.contains("`route.max_concurrent` = 0 is out of range"),
        "{error}"
    );
    assert!(error.contains(":5:"), "names the line: {error}");
}

#[test]
fn routes_stored_before_route_settings_existed_still_load() {
    let old = r#"{"domains":["a.com"],"path":"/"}"#;
    let route: Route = serde_json::from_str(old).unwrap();
    assert_eq!(route.tls, Tls::Auto);
    assert!(route.redirect_http && route.hsts);
    assert_eq!(route.max_body, 10 << 20);
}

const BACKUPS: &str = r#"
app = "shop"

[services.web]
image = "shop:1"
port = 8000
volumes = ["data:/data", "uploads:/app/uploads"]

[accessories.db]
image = "postgres:16"
volumes = ["pgdata:/var/lib/postgresql/data"]

[accessories.redis]
image = "redis:7"
volumes = ["redisdata:/data"]

[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]

[storage.offsite]
s3 = { bucket = "shop-backups", endpoint = "https://s3.example.com/", prefix = "/prod/" }

[storage.nas]
path = "/mnt/nas/backups"

[backups.app-db]
source = { sqlite = { service = "web", path = "/data/app.db" } }
schedule = "0 3 * * *"
keep = { daily = 7, weekly = 4, monthly = 12 }
to = ["local", "offsite"]
verify_schedule = "0 5 * * 0"

[backups.pg]
source = { postgres = { service = "db", database = "shop", password_secret = "POSTGRES_PASSWORD" } }

[backups.pg-remote]
source = { postgres = { url = "postgres://backup@10.0.0.5/shop?sslmode=require", verify = "list" } }
to = ["nas"]

[backups.maria]
source = { mysql = { host = "127.0.0.1", database = "legacy", user = "dump", password_secret = "MYSQL_PASSWORD" } }

[backups.uploads]
source = { volume = { name = "uploads", pause = true } }

[backups.cache]
source = { volume = { name = "redisdata", service = "redis", before = "redis-cli SAVE" } }

[backups.files]
source = { directory = { path = "/srv/files" } }

[backups.custom]
source = { command = { service = "redis", dump = ["redis-cli", "--rdb", "-"] } }

[backups.state]
source = "berth"
keep = { last = 3 }
"#;

#[test]
fn backups_resolve_with_defaults_filled_in() {
    let m = load(source(BACKUPS), None).unwrap();
    let b = &m.backup;
    assert_eq!(b.recipients.len(), 1);
    assert_eq!(b.storage["local"], Storage::Directory(None));
    assert_eq!(
        b.storage["nas"],
        Storage::Directory(Some("/mnt/nas/backups".into()))
    );
    let Storage::S3(s3) = &b.storage["offsite"] else {
        panic!("offsite is not S3");
    };
    assert_eq!(s3.endpoint.as_deref(), Some("https://s3.example.com"));
    assert!(
        s3.path_style,
        "an endpoint defaults to path-style addressing"
    );
    assert_eq!(s3.prefix, "prod");
    assert_eq!(s3.region, "us-east-1");
    assert_eq!(s3.access_key_id_secret, "AWS_ACCESS_KEY_ID");
    assert_eq!(s3.secret_access_key_secret, "AWS_SECRET_ACCESS_KEY");
    assert_eq!(s3.part_size, 16 << 20);

    let db = &b.backups["app-db"];
    assert_eq!(
        db.source,
        BackupSource::Sqlite {
            service: Some("web".into()),
            path: "/data/app.db".into()
        }
    );
    assert_eq!(db.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(db.keep.daily, 7);
    assert_eq!(db.keep.weekly, 4);
    assert_eq!(db.keep.monthly, 12);
    assert_eq!(db.to, ["local", "offsite"]);

    let BackupSource::Postgres(pg) = &b.backups["pg"].source else {
        panic!("pg is not postgres");
    };
    assert_eq!(pg.location, DatabaseLocation::Service("db".into()));
    assert_eq!(pg.user, "postgres");
    assert!(pg.verify_by_restore);
    assert_eq!(b.backups["pg"].to, ["local"]);

    let BackupSource::Postgres(remote) = &b.backups["pg-remote"].source else {
        panic!("pg-remote is not postgres");
    };
    assert_eq!(
        remote.location,
        DatabaseLocation::Host {
            host: "10.0.0.5".into(),
            port: 5432
        }
    );
    assert_eq!(remote.user, "backup");
    assert_eq!(remote.database, "shop");
    assert_eq!(remote.options["sslmode"], "require");
    assert!(!remote.verify_by_restore);

    let BackupSource::Mysql(maria) = &b.backups["maria"].source else {
        panic!("maria is not mysql");
    };
    assert_eq!(
        maria.location,
        DatabaseLocation::Host {
            host: "127.0.0.1".into(),
            port: 3306
        }
    );
    assert_eq!(maria.password_secret.as_deref(), Some("MYSQL_PASSWORD"));

    assert!(matches!(
        &b.backups["uploads"].source,
        BackupSource::Volume { volume, pause: true, .. } if volume == "uploads"
    ));
    assert!(matches!(
        &b.backups["cache"].source,
        BackupSource::Volume { before: Some(cmd), service: Some(s), .. }
            if cmd == &["redis-cli", "SAVE"] && s == "redis"
    ));
    assert_eq!(b.backups["state"].source, BackupSource::Berth);
    assert_eq!(b.backups["state"].keep.last, 3);
    // The whole manifest survives the trip through the release record.
    let json = serde_json::to_string(&m).unwrap();
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
}

#[test]
fn manifests_stored_before_backups_existed_still_load() {
    let m = load(source(FULL), None).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&m).unwrap();
    json.as_object_mut().unwrap().remove("backup");
    let back: Manifest = serde_json::from_value(json).unwrap();
    assert!(back.backup.backups.is_empty());
}

#[test]
fn a_broken_storage_is_reported_once_not_again_by_its_backups() {
    let text = "app = \"a\"\n[services.web]\nimage = \"x\"\nvolumes = [\"data:/data\"]\n[storage.offsite]\ns3 = { bucket = \"b\" }\n[backups.db]\nsource = { volume = { name = \"data\" } }\nto = [\"offsite\"]\n";
    let error = load(source(text), None).unwrap_err();
    let located = error.located();
    assert_eq!(located.len(), 1, "{error}");
    assert!(located[0].message.contains("not a valid bucket name"));
}

#[test]
fn mounts_and_ports_that_hand_containers_the_host_are_named() {
    let text = r#"
app = "risky"

[services.web]
image = "x"
port = 80
volumes = ["/var/run/docker.sock:/var/run/docker.sock", "/:/host:ro", "/etc/:/etc-host", "./data:/data", "/srv/app/uploads:/uploads"]

[accessories.db]
image = "postgres:16"
publish = ["5432:5432", "127.0.0.1:6432:6432"]
"#;
    let manifest = load(source(text), None).unwrap();
    let found = risks(&manifest);
    let messages: Vec<String> = found
        .iter()
        .map(|r| format!("{}: {}", r.service, r.message))
        .collect();
    assert_eq!(found.len(), 4, "{messages:#?}");
    assert!(
        messages[0].starts_with("web: mounts the Docker socket"),
        "{messages:#?}"
    );
    assert!(messages[0].contains("root on the host"));
    assert!(messages[1].contains("mounts the host's /"));
    assert!(!messages[1].contains("writable"), "read-only is said");
    assert!(messages[2].contains("/etc (writable)"), "{messages:#?}");
    assert!(messages[3].starts_with("db: publishes port 5432 on every address"));
    assert!(found[3].help.contains("127.0.0.1:5432:5432"));
    assert!(
        risks(&load(source(FULL), None).unwrap()).is_empty(),
        "the full example is clean"
    );
}

#[test]
fn every_unknown_key_and_wrong_type_is_reported_at_once_in_plain_words() {
    let text = r#"app = "shop"
colour = "blue"

[services.web]
image = "x"
port = "eighty"
replicaz = 2

[services.web.healthcheck]
path = "/health"
intervall = "1s"

[deploy]
keep_releases = "five"
"#;
    let error = load(source(text), None).unwrap_err();
    let found: Vec<(usize, String)> = error
        .located()
        .into_iter()
        .map(|d| (d.line.unwrap_or(0), d.message))
        .collect();
    assert_eq!(
        found,
        [
            (2, "unknown key `colour`".to_owned()),
            (
                6,
                "invalid type: string \"eighty\", expected a whole number".to_owned()
            ),
            (7, "unknown key `replicaz`".to_owned()),
            (11, "unknown key `intervall`".to_owned()),
            (
                14,
                "invalid type: string \"five\", expected a whole number".to_owned()
            ),
        ],
        "{found:#?}"
    );
    assert!(!error.to_string().contains("i64"), "{error}");
}

#[test]
fn a_registry_and_pull_policies_resolve_with_their_defaults() {
    let text = "app = \"a\"\n[services.web]\nimage = \"ghcr.io/o/web:main\"\n[services.pinned]\nimage = \"ghcr.io/o/web:main\"\npull = \"missing\"\n[accessories.db]\nimage = \"postgres:16\"\n[registry]\nserver = \"ghcr.io\"\nusername = \"me\"\n";
    let m = load(source(text), None).unwrap();
    let registry = m.registry.as_ref().unwrap();
    assert_eq!(
        (registry.server.as_str(), registry.username.as_str()),
        ("ghcr.io", "me")
    );
    assert_eq!(registry.password_secret, "REGISTRY_PASSWORD");
    assert_eq!(m.secret_names(), ["REGISTRY_PASSWORD"]);
    let pull = |s: &Service| match &s.source {
        ImageSource::Image { pull, .. } => *pull,
        ImageSource::Build(_) => panic!("an image was expected"),
    };
    assert_eq!(pull(&m.services["web"]), None);
    assert_eq!(pull(&m.services["pinned"]), Some(PullPolicy::Missing));
    assert_eq!(PullPolicy::default_for(false), PullPolicy::Always);
    assert_eq!(PullPolicy::default_for(true), PullPolicy::Missing);
    // A service without `pull` serializes as before, so accessories labelled by an older
    // berth keep their fingerprint and are not recreated.
    let json = serde_json::to_string(&m.accessories["db"]).unwrap();
    assert!(!json.contains("pull"), "{json}");
}

const ALERTS: &str = r#"
app = "shop"

[services.web]
image = "shop:1"
port = 8000
healthcheck = { path = "/health", failure_threshold = 2, restart_after = "never" }

[services.worker]
image = "shop:1"
healthcheck = { command = "true", restart_after = "30s" }

[alerts.ops]
type = "webhook"
url = "https://hooks.example.com/berth"
signing_secret = "ALERT_WEBHOOK_KEY"

[alerts.team]
type = "slack"
url_secret = "SLACK_WEBHOOK_URL"
min_severity = "critical"

[alerts.phone]
type = "telegram"
token_secret = "TELEGRAM_TOKEN"
chat_id = -1001234567890
send_resolved = false
remind_every = "0s"

[alerts.mail]
type = "email"
smtp = "smtp.example.com:465"
tls = "implicit"
from = "berth@example.com"
to = ["ops@example.com"]
username = "berth"
password_secret = "SMTP_PASSWORD"
"#;

#[test]
fn alert_channels_and_health_settings_resolve_with_defaults() {
    let manifest = load(source(ALERTS), None).unwrap();
    let web = &manifest.services["web"].healthcheck;
    assert_eq!(
        (web.failure_threshold, web.restart_after),
        (2, Duration::ZERO)
    );
    let worker = &manifest.services["worker"].healthcheck;
    assert_eq!(
        (worker.failure_threshold, worker.restart_after),
        (3, Duration::from_secs(30))
    );
    let by_name = |name: &str| manifest.alerts.iter().find(|c| c.name == name).unwrap();
    let ops = by_name("ops");
    assert_eq!(
        ops.kind,
        ChannelKind::Webhook {
            url: "https://hooks.example.com/berth".into(),
            signing_secret: Some("ALERT_WEBHOOK_KEY".into())
        }
    );
    assert_eq!(ops.min_severity, Severity::Warning);
    assert!(ops.send_resolved);
    assert_eq!(ops.remind_every, Duration::from_secs(4 * 3600));
    assert_eq!(by_name("team").min_severity, Severity::Critical);
    let phone = by_name("phone");
    assert_eq!(
        phone.kind,
        ChannelKind::Telegram {
            token_secret: "TELEGRAM_TOKEN".into(),
            chat_id: "-1001234567890".into()
        }
    );
    assert!(!phone.send_resolved && phone.remind_every.is_zero());
    let ChannelKind::Email(mail) = &by_name("mail").kind else {
        panic!("mail is an email channel");
    };
    assert_eq!(
        (mail.host.as_str(), mail.port, mail.tls),
        ("smtp.example.com", 465, SmtpTls::Implicit)
    );
    for secret in [
        "ALERT_WEBHOOK_KEY",
        "SLACK_WEBHOOK_URL",
        "TELEGRAM_TOKEN",
        "SMTP_PASSWORD",
    ] {
        assert!(
            manifest.secret_names().contains(&secret),
            "a deploy checks {secret} exists"
        );
    }
    let round_trip: Manifest =
        serde_json::from_str(&serde_json::to_string(&manifest).unwrap()).unwrap();
    assert_eq!(round_trip, manifest);
}

#[test]
fn broken_alert_channels_are_named_with_the_fix() {
    let cases = [
        ("type = \"pager\"", "unknown type `pager`", "webhook, slack"),
        ("type = \"webhook\"", "needs `url`", "https://"),
        (
            "type = \"webhook\"\nurl = \"https://user:pw@hooks.example.com\"",
            "credentials in it",
            "berth secret",
        ),
        (
            "type = \"webhook\"\nurl = \"ftp://x\"",
            "not an HTTP(S) URL",
            "https://",
        ),
        (
            "type = \"webhook\"\nurl = \"http://hooks.example.com/x\"",
            "plain HTTP to another host",
            "https://",
        ),
        (
            "type = \"email\"\nsmtp = \"mail.example.com:587\"\nfrom = \"a@b.com\"\nto = [\"c@d.com\"]\nusername = \"u\"",
            "no `password_secret`",
            "SMTP password",
        ),
        ("type = \"slack\"", "needs `url_secret`", "berth secret"),
        (
            "type = \"slack\"\nurl_secret = \"https://hooks.slack.com/x\"",
            "not a valid secret name",
            "never goes in berth.toml",
        ),
        (
            "type = \"email\"\nfrom = \"a@b.com\"\nto = [\"c@d.com\"]",
            "needs `smtp`",
            "host:port",
        ),
        (
            "type = \"email\"\nsmtp = \"mail.example.com:25\"\ntls = \"none\"\nfrom = \"a@b.com\"\nto = [\"c@d.com\"]",
            "without TLS to mail.example.com",
            "only for a relay on this host",
        ),
        (
            "type = \"email\"\nsmtp = \"mail:25\"\nfrom = \"nobody\"\nto = [\"c@d.com\"]",
            "not an email address",
            "ops@example.com",
        ),
        (
            "type = \"ntfy\"\nurl = \"https://ntfy.sh/t\"\nremind_every = \"5s\"",
            "too often",
            "once a minute",
        ),
    ];
    for (body, message, help) in cases {
        let text =
            format!("app = \"shop\"\n[services.web]\nimage = \"a:1\"\n[alerts.ops]\n{body}\n");
        let error = load(source(&text), None).expect_err(body);
        let first = &error.located()[0];
        assert!(
            first.message.contains(message) && first.help.as_deref().unwrap_or("").contains(help),
            "{body}: got `{}` (help {:?})",
            first.message,
            first.help
        );
    }
}

#[test]
fn monitors_resolve_with_gatus_like_defaults_and_broken_ones_are_named() {
    let text = r#"app = "shop"
[services.web]
image = "a:1"

[monitors.site]
url = "https://shop.example.com/health"
body = "ok"
json_path = "checks.db"
json_equals = "up"

[monitors.db]
tcp = "db.example.com:5432"
interval = "30s"
failure_threshold = 1
success_threshold = 1
send_on_resolved = false

[monitors.name]
dns = "shop.example.com"
addresses = ["203.0.113.7"]
certificate_expiry = "0s"
"#;
    let manifest = load(source(text), None).unwrap();
    let by_name = |n: &str| manifest.monitors.iter().find(|m| m.name == n).unwrap();
    let site = by_name("site");
    assert_eq!(
        site.check,
        MonitorCheck::Http {
            url: "https://shop.example.com/health".into(),
            status: StatusRange { min: 200, max: 299 },
            body: Some("ok".into()),
            json_path: Some("checks.db".into()),
            json_equals: Some("up".into()),
        }
    );
    assert_eq!(
        (site.interval, site.timeout),
        (Duration::from_secs(60), Duration::from_secs(10))
    );
    assert_eq!((site.failure_threshold, site.success_threshold), (3, 2));
    assert!(site.send_on_resolved);
    assert_eq!(site.certificate_expiry, Duration::from_secs(14 * 86_400));
    let db = by_name("db");
    assert_eq!(
        db.check,
        MonitorCheck::Tcp {
            host: "db.example.com".into(),
            port: 5432
        }
    );
    assert_eq!(
        (
            db.failure_threshold,
            db.success_threshold,
            db.send_on_resolved
        ),
        (1, 1, false)
    );
    assert!(by_name("name").certificate_expiry.is_zero());

    for (body, message) in [
        ("interval = \"1m\"", "exactly one of `url`, `tcp` and `dns`"),
        (
            "url = \"https://a.example\"\ntcp = \"a:1\"",
            "exactly one of",
        ),
        ("tcp = \"db.example.com\"", "is not host:port"),
        (
            "dns = \"a.example\"\nbody = \"x\"",
            "only applies to a `url` check",
        ),
        (
            "url = \"https://a.example\"\njson_path = \"status\"",
            "go together",
        ),
        (
            "dns = \"a.example\"\naddresses = [\"nope\"]",
            "not an IP address",
        ),
        ("tcp = \"a:1\"\ninterval = \"100ms\"", "under a second"),
    ] {
        let text =
            format!("app = \"shop\"\n[services.web]\nimage = \"a:1\"\n[monitors.m]\n{body}\n");
        let error = load(source(&text), None).expect_err(body);
        let first = &error.located()[0];
        assert!(
            first.message.contains(message),
            "{body}: got `{}`",
            first.message
        );
    }
}

#[test]
fn thresholds_resolve_and_unreadable_ones_are_named() {
    let text = r#"app = "shop"
[services.web]
image = "a:1"
memory = "256m"

[accessories.db]
image = "postgres:16"

[thresholds.web-memory]
service = "web"
when = "memory > 90% for 5m"
severity = "critical"

[thresholds.load]
when = "host.load > 4"
"#;
    let manifest = load(source(text), None).unwrap();
    let memory = &manifest.thresholds[1];
    assert_eq!(memory.name, "web-memory");
    assert_eq!(memory.service.as_deref(), Some("web"));
    assert_eq!(memory.severity, Severity::Critical);
    assert_eq!(memory.condition.to_string(), "memory > 90% for 5m");
    let load_threshold = &manifest.thresholds[0];
    assert_eq!(load_threshold.condition.metric, Metric::HostLoad);
    assert_eq!(load_threshold.severity, Severity::Warning);

    for (body, message) in [
        ("when = \"cpu > 80% for\"", "after `for`"),
        (
            "when = \"memory > 90%\"",
            "`db` has no memory limit to take a percentage of",
        ),
        (
            "when = \"cpu > 80%\"\nservice = \"api\"",
            "there is no service or accessory `api`",
        ),
        (
            "when = \"disk > 80%\"\nservice = \"web\"",
            "disk is the host's, not a service's",
        ),
        (
            "when = \"cpu > 80%\"\nseverity = \"page\"",
            "not a severity",
        ),
        ("service = \"web\"", "missing field `when`"),
    ] {
        let text = format!(
            "app = \"shop\"\n[services.web]\nimage = \"a:1\"\nmemory = \"1g\"\n[accessories.db]\nimage = \"p:1\"\n[thresholds.t]\n{body}\n"
        );
        let error = load(source(&text), None).expect_err(body);
        let first = &error.located()[0];
        assert!(
            first.message.contains(message),
            "{body}: got `{}`",
            first.message
        );
    }
}

#[test]
fn syslog_forwarding_is_set_for_the_whole_app_and_broken_targets_are_named() {
    let text = r#"app = "shop"
[logging]
syslog = "tcp://logs.example.com:601"
syslog_facility = "local3"
[services.web]
image = "a:1"
"#;
    let manifest = load(source(text), None).unwrap();
    assert_eq!(
        manifest.log_forward,
        Some(LogForward {
            transport: "tcp".into(),
            host: "logs.example.com".into(),
            port: 601,
            facility: 19,
        })
    );
    let target = |syslog: &str| {
        let text = format!(
            "app = \"shop\"\n[logging]\nsyslog = \"{syslog}\"\n[services.web]\nimage = \"a:1\"\n"
        );
        load(source(&text), None)
            .map(|m| {
                m.log_forward
                    .map(|f| (f.transport, f.host, f.port, f.facility))
            })
            .map_err(|e| e.located()[0].message.clone())
    };
    assert_eq!(
        target("udp://10.0.0.5"),
        Ok(Some(("udp".into(), "10.0.0.5".into(), 514, 1)))
    );
    assert_eq!(
        target("udp://[2001:db8::5]:1514"),
        Ok(Some(("udp".into(), "2001:db8::5".into(), 1514, 1)))
    );
    for (syslog, message) in [
        ("logs.example.com:514", "has no transport"),
        ("tls://logs.example.com:6514", "over udp or tcp, not `tls`"),
        ("udp://2001:db8::5:514", "has no valid port"),
        ("tcp://logs.example.com:http", "has no valid port"),
        ("udp://:514", "is not a host"),
    ] {
        let error = target(syslog).expect_err(syslog);
        assert!(error.contains(message), "{syslog}: {error}");
    }
    let per_service =
        "app = \"shop\"\n[services.web]\nimage = \"a:1\"\nlogging = { syslog = \"udp://h\" }\n";
    let error = load(source(per_service), None).expect_err("per service");
    assert!(
        error.located()[0]
            .message
            .contains("syslog is set for the whole app"),
        "{}",
        error.located()[0].message
    );
    let facility =
        "app = \"shop\"\n[logging]\nsyslog_facility = \"kern\"\n[services.web]\nimage = \"a:1\"\n";
    let error = load(source(facility), None).expect_err("kern");
    assert!(error.located()[0].message.contains("not a facility"));
}
