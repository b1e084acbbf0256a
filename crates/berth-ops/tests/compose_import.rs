//! `berth import compose` on Compose files shaped like the stacks berth's users run. Each one
//! is converted, the manifest checked as `berth check` checks it (the import refuses to return
//! one that fails), and what each conversion must and must not do asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_ops::compose::{self, Finding, Import, ImportOptions, Severity};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compose")
        .join(name)
}

fn import_with(name: &str, profiles: &[&str]) -> Import {
    let dir = fixture(name);
    let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let options = ImportOptions {
        file_name: "compose.yaml".into(),
        compose_dir: dir.clone(),
        output_dir: dir,
        app: None,
        profiles: profiles.iter().map(|p| (*p).to_owned()).collect(),
    };
    let import = compose::import(&text, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("== {name}\n{}", import.manifest);
    for finding in &import.findings {
        println!("{:?} {}", finding.severity, finding.display("compose.yaml"));
    }
    for secret in &import.secrets {
        println!("secret {}: {}", secret.name, secret.how);
    }
    import
}

fn import(name: &str) -> Import {
    let import = import_with(name, &[]);
    backup_suggestions_check(name, &import);
    import
}

/// The commented backup suggestions, uncommented, still pass `berth check`.
fn backup_suggestions_check(name: &str, import: &Import) {
    let uncommented: String = import
        .manifest
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[backups.")
                    || rest.starts_with("source =")
                    || rest.starts_with("schedule =")
                    || rest.starts_with("keep =") =>
            {
                rest
            }
            _ => line,
        })
        .fold(String::new(), |acc, line| acc + line + "\n");
    let dir = fixture(name);
    let source = berth_manifest::ManifestSource {
        file: "berth.toml",
        text: &uncommented,
        base_dir: &dir,
    };
    if let Err(e) = berth_manifest::load(source, None) {
        panic!("{name}: the backup suggestions do not check:\n{e}\n{uncommented}");
    }
}

fn manifest(import: &Import) -> toml::Table {
    import.manifest.parse().unwrap()
}

fn finding<'a>(import: &'a Import, text: &str) -> &'a Finding {
    import
        .findings
        .iter()
        .find(|f| f.message.contains(text))
        .unwrap_or_else(|| panic!("no finding mentions `{text}`: {:#?}", import.findings))
}

#[test]
fn api_with_postgres_redis_and_a_migration_service() {
    let import = import("api-postgres-redis");
    let m = manifest(&import);
    assert_eq!(m["app"].as_str(), Some("notes"));
    let api = &m["services"]["api"];
    assert_eq!(api["build"].as_str(), Some("."));
    assert_eq!(api["port"].as_integer(), Some(8000));
    assert_eq!(api["release_command"].as_array().unwrap().len(), 3);
    assert_eq!(api["healthcheck"]["path"].as_str(), Some("/health"));
    assert_eq!(
        api["healthcheck"]["failure_threshold"].as_integer(),
        Some(5)
    );
    assert!(api["route"]["domains"].as_array().unwrap().is_empty());
    let secrets: Vec<&str> = api["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(secrets, ["DATABASE_URL", "JWT_SECRET"]);
    assert_eq!(
        api["env"]["REDIS_URL"].as_str(),
        Some("redis://cache:6379/0")
    );
    let deps: Vec<&str> = api["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(deps, ["db", "cache"]);
    assert!(m["services"].get("migrate").is_none());
    let db = &m["accessories"]["db"];
    assert_eq!(db["image"].as_str(), Some("postgres:16-alpine"));
    assert_eq!(db["publish"][0].as_str(), Some("127.0.0.1:5432:5432"));
    assert_eq!(db["healthcheck"]["command"][0].as_str(), Some("sh"));
    assert_eq!(db["restart"].as_str(), Some("always"));
    assert!(m["accessories"]["cache"].get("route").is_none());
    // No value from .env or the Compose file reaches the manifest.
    assert!(!import.manifest.contains("change-me"));
    assert!(!import.manifest.contains("also-change-me"));
    assert_eq!(finding(&import, "every address").line, Some(48));
    assert_eq!(finding(&import, "release_command").line, Some(20));
    let pg = import
        .secrets
        .iter()
        .find(|s| s.name == "POSTGRES_PASSWORD")
        .unwrap();
    assert!(pg.how.contains("berth secrets import .env"), "{pg:?}");
}

#[test]
fn python_api_worker_and_vector_database() {
    let import = import("python-worker-vector");
    let m = manifest(&import);
    assert_eq!(m["app"].as_str(), Some("python-worker-vector"));
    let api = &m["services"]["api"];
    assert_eq!(
        api["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    assert_eq!(api["build"]["target"].as_str(), Some("runtime"));
    assert_eq!(
        api["build"]["args"]["PYTHON_VERSION"].as_str(),
        Some("3.12")
    );
    assert_eq!(api["command"][0].as_str(), Some("uvicorn"));
    assert_eq!(api["replicas"].as_integer(), Some(2));
    assert_eq!(api["memory"].as_str(), Some("1g"));
    assert_eq!(api["cpus"].as_float(), Some(1.5));
    // Every variable of the env file is a secret by name; none of its values is written.
    let secrets: Vec<&str> = api["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(secrets, ["OPENAI_API_KEY", "EMBEDDING_MODEL", "LOG_LEVEL"]);
    assert!(!import.manifest.contains("sk-test"));
    let worker = &m["services"]["celery-worker"];
    assert_eq!(worker["memory"].as_str(), Some("2g"));
    assert!(worker.get("route").is_none());
    assert!(finding(&import, "named `celery-worker`").line == Some(28));
    assert_eq!(
        m["accessories"]["qdrant"]["volumes"][0].as_str(),
        Some("qdrant_storage:/qdrant/storage")
    );
    assert_eq!(
        m["accessories"]["redis"]["volumes"][0].as_str(),
        Some("redis_data:/data")
    );
    let how = &import
        .secrets
        .iter()
        .find(|s| s.name == "OPENAI_API_KEY")
        .unwrap()
        .how;
    assert!(how.contains("berth secrets import .env.api"), "{how}");
}

#[test]
fn llm_runtime_with_a_gpu_reservation() {
    let import = import("llm-gpu");
    let m = manifest(&import);
    let ollama = &m["accessories"]["ollama"];
    assert_eq!(ollama["gpus"].as_str(), Some("all"));
    assert_eq!(ollama["volumes"][0].as_str(), Some("ollama:/root/.ollama"));
    assert_eq!(ollama["publish"][0].as_str(), Some("127.0.0.1:11434:11434"));
    let webui = &m["services"]["webui"];
    assert_eq!(webui["port"].as_integer(), Some(8080));
    assert!(webui["route"]["domains"].as_array().unwrap().is_empty());
    assert_eq!(webui["secrets"][0].as_str(), Some("WEBUI_SECRET_KEY"));
    assert_eq!(webui["depends_on"][0].as_str(), Some("ollama"));
    assert_eq!(m["services"]["embedder"]["gpus"].as_str(), Some("all"));
}

#[test]
fn frontend_and_backend_behind_a_reverse_proxy() {
    let import = import("frontend-backend");
    let m = manifest(&import);
    assert_eq!(
        m["services"]["frontend"]["build"].as_str(),
        Some("./frontend")
    );
    assert_eq!(
        m["services"]["backend"]["build"].as_str(),
        Some("./backend")
    );
    // nginx published port 80, so it is the front; the others get placeholders to replace.
    assert!(
        m["services"]["nginx"]["route"]["domains"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        m["services"]["backend"]["route"]["domains"][0].as_str(),
        Some("backend.localhost")
    );
    assert_eq!(
        m["services"]["backend"]["route"]["tls"].as_str(),
        Some("off")
    );
    assert_eq!(finding(&import, "reverse proxy").line, Some(20));
    assert_eq!(finding(&import, "port 9229").line, Some(15));
    assert_eq!(finding(&import, "port 443").line, Some(23));
    assert_eq!(
        m["services"]["nginx"]["volumes"][0].as_str(),
        Some("./nginx.conf:/etc/nginx/nginx.conf:ro")
    );
}

#[test]
fn env_files_and_compose_secrets() {
    let import = import("env-files-and-secrets");
    let m = manifest(&import);
    let app = &m["services"]["app"];
    let files: Vec<&str> = app["secret_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(files, ["db_password", "stripe_key", "api_token"]);
    let secrets: Vec<&str> = app["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(secrets, ["APP_ENV", "SMTP_PASSWORD", "SENTRY_DSN"]);
    assert_eq!(app["env"]["FEATURE_FLAGS"].as_str(), Some("search,export"));
    assert_eq!(
        app["env"]["DB_PASSWORD_FILE"].as_str(),
        Some("/run/secrets/db_password")
    );
    assert!(!import.manifest.contains("hunter2"));
    // Published on 127.0.0.1 only: an admin's tool, not routed to the world.
    assert!(app.get("route").is_none(), "{}", import.manifest);
    assert_eq!(app["port"].as_integer(), Some(8080));
    assert_eq!(finding(&import, "loopback only").line, Some(6));
    assert!(!import.manifest.contains("s3cret"));
    assert_eq!(finding(&import, "stripe_key").line, Some(16));
    let db = import
        .secrets
        .iter()
        .find(|s| s.name == "db_password")
        .unwrap();
    assert_eq!(
        db.how,
        "berth secrets set db_password < ./secrets/db_password.txt"
    );
    let stripe = import
        .secrets
        .iter()
        .find(|s| s.name == "stripe_key")
        .unwrap();
    assert!(stripe.how.contains("$STRIPE_KEY"), "{stripe:?}");
    // The optional env file is absent and says nothing; `uid`/`mode` are named.
    assert!(
        import
            .findings
            .iter()
            .all(|f| !f.message.contains("local.env"))
    );
    assert!(finding(&import, "secret `uid`").line == Some(19));
}

#[test]
fn healthchecks_in_every_form() {
    let import = import("healthchecks");
    let m = manifest(&import);
    let s = &m["services"];
    assert_eq!(
        s["exec-form"]["healthcheck"]["command"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s["exec-form"]["healthcheck"]["interval"].as_str(),
        Some("30s")
    );
    assert_eq!(
        s["exec-form"]["healthcheck"]["failure_threshold"].as_integer(),
        Some(3)
    );
    assert_eq!(
        s["shell-form"]["healthcheck"]["path"].as_str(),
        Some("/ready")
    );
    // start_period 2m + 3 retries × 1m30s
    assert_eq!(
        s["shell-form"]["healthcheck"]["start_timeout"].as_str(),
        Some("6m30s")
    );
    assert_eq!(
        s["string-form"]["healthcheck"]["command"][2].as_str(),
        Some("test -f /tmp/healthy")
    );
    assert!(s["none-form"].get("healthcheck").is_none());
    assert!(s["disabled"].get("healthcheck").is_none());
    let database = &m["accessories"]["database"];
    assert_eq!(
        database["healthcheck"]["command"][0].as_str(),
        Some("mysqladmin")
    );
    assert_eq!(database["secrets"][0].as_str(), Some("MYSQL_ROOT_PASSWORD"));
    assert!(!import.manifest.contains("example\""));
    assert_eq!(
        finding(&import, "MYSQL_ROOT_PASSWORD is written").line,
        Some(38)
    );
    assert_eq!(finding(&import, "start_interval").line, Some(23));
}

#[test]
fn profiles_leave_services_out_unless_asked() {
    let import = import("profiles");
    let m = manifest(&import);
    assert!(m["services"].get("adminer").is_none());
    assert!(m["services"].get("loadtest").is_none());
    assert_eq!(finding(&import, "profile debug").line, Some(16));
    let with_debug = import_with("profiles", &["debug"]);
    let m = manifest(&with_debug);
    assert!(m["services"].get("adminer").is_some());
    assert!(m["services"].get("loadtest").is_none());
    // web published port 80: it is the front; adminer gets a placeholder domain.
    assert!(
        m["services"]["web"]["route"]["domains"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        m["services"]["adminer"]["route"]["domains"][0].as_str(),
        Some("adminer.localhost")
    );
}

#[test]
fn named_bind_anonymous_tmpfs_and_external_volumes() {
    let import = import("volumes");
    let m = manifest(&import);
    let volumes: Vec<&str> = m["services"]["app"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "uploads:/srv/uploads",
            "./config:/etc/app:ro",
            "/srv/shared:/shared:ro",
            "app_var_cache_app:/var/cache/app",
            "legacy:/legacy",
            "/var/run/docker.sock:/var/run/docker.sock"
        ]
    );
    assert_eq!(m["services"]["app"]["port"].as_integer(), Some(8080));
    assert_eq!(finding(&import, "anonymous volume").line, Some(13));
    assert_eq!(finding(&import, "`tmpfs` mount").line, Some(14));
    assert_eq!(finding(&import, "Docker socket").line, Some(21));
    assert_eq!(finding(&import, "is external").line, Some(30));
    assert_eq!(finding(&import, "`user`").line, Some(25));
    assert_eq!(finding(&import, "`tmpfs` is not").line, Some(24));
}

#[test]
fn anchors_merge_keys_extensions_and_interpolation() {
    let import = import("anchors-and-interpolation");
    let m = manifest(&import);
    let web = &m["services"]["web"];
    assert_eq!(web["image"].as_str(), Some("ghcr.io/example/shop:2.4.0"));
    assert_eq!(web["env"]["LOG_LEVEL"].as_str(), Some("debug"));
    assert_eq!(web["env"]["TZ"].as_str(), Some("Europe/Berlin"));
    assert_eq!(web["restart"].as_str(), Some("always"));
    assert_eq!(web["logging"]["max_size"].as_str(), Some("10m"));
    assert_eq!(web["logging"]["max_files"].as_integer(), Some(5));
    assert_eq!(web["stop_timeout"].as_str(), Some("45s"));
    // SHOP_MODE names a variable set nowhere: a secret to set, and said so.
    assert_eq!(web["secrets"][0].as_str(), Some("SHOP_MODE"));
    assert_eq!(m["services"]["worker"]["init"].as_bool(), Some(true));
    assert_eq!(finding(&import, "obsolete").line, Some(1));
    assert!(import.findings.iter().all(|f| !f.message.contains("x-")));
}

#[test]
fn an_older_rails_stack_reports_everything_it_cannot_carry() {
    let import = import("rails-sidekiq-mariadb");
    let m = manifest(&import);
    let web = &m["services"]["web"];
    assert_eq!(web["build"]["args"]["RUBY_VERSION"].as_str(), Some("3.3"));
    assert_eq!(web["command"][0].as_str(), Some("bundle"));
    assert_eq!(web["memory"].as_str(), Some("768m"));
    assert_eq!(web["cpus"].as_float(), Some(0.75));
    assert_eq!(web["replicas"].as_integer(), Some(3));
    assert_eq!(web["restart"].as_str(), Some("on-failure"));
    let secrets: Vec<&str> = web["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(secrets, ["DATABASE_URL", "RAILS_MASTER_KEY"]);
    assert!(!import.manifest.contains("railspass"));
    // The sidekiq entrypoint became its command? No: it has a command, so the entrypoint is reported.
    assert_eq!(
        m["services"]["sidekiq"]["command"][0].as_str(),
        Some("bundle")
    );
    for (text, line) in [
        ("build arg `BUNDLE_WITHOUT`", 9),
        ("`build.cache_from`", 10),
        ("`container_name`", 13),
        ("`entrypoint` is not carried", 14),
        ("`on-failure:N`", 25),
        ("log driver `syslog`", 30),
        ("`deploy.placement`", 37),
        ("`cap_add`", 48),
    ] {
        assert_eq!(finding(&import, text).line, Some(line), "{text}");
    }
    assert_eq!(
        finding(&import, "`deploy.update_config` is not needed").severity,
        Severity::Note
    );
    assert!(m["accessories"].get("mariadb").is_some());
    assert!(m["accessories"].get("memcached").is_some());
}

#[test]
fn what_is_not_compose_is_refused_with_the_line() {
    let options = ImportOptions {
        file_name: "compose.yaml".into(),
        compose_dir: std::env::temp_dir(),
        output_dir: std::env::temp_dir(),
        ..ImportOptions::default()
    };
    let broken = compose::import("services:\n  web:\n    image: [\n", &options).unwrap_err();
    assert!(broken.to_string().starts_with("compose.yaml:"), "{broken}");
    let not_compose = compose::import("hello: world\n", &options).unwrap_err();
    assert!(
        not_compose.to_string().contains("no `services:`"),
        "{not_compose}"
    );
    let bad_var = compose::import(
        "services:\n  web:\n    image: \"app:${TAG:?set TAG first}\"\n",
        &options,
    )
    .unwrap_err();
    assert!(
        bad_var
            .to_string()
            .contains("compose.yaml:3: ${TAG}: set TAG first"),
        "{bad_var}"
    );
}
