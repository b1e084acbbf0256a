//! Backups end to end with real peers: SQLite under a live writer, PostgreSQL (in a
//! container and Debian's server on loopback), MariaDB, volumes, an S3-compatible server with
//! multipart uploads, disaster recovery onto a new agent, and every failure a backup must
//! report instead of calling itself good.

use crate::harness::{Agent, AppDir, Run};
use crate::peers::{
    DB_IMAGE, HostPostgres, S3_KEY, S3_SECRET, S3Server, UserKey, docker_exec, require_db_image,
    sha256_file, volume_dir, wait_until,
};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A SQLite writer in a container: each transaction adds the next order and its two lines,
/// so a consistent copy always holds exactly twice as many lines as orders, and order ids
/// have no gaps even when a transaction is retried (the id is taken inside it).
const WRITER: &str = r#"sqlite3 -cmd '.timeout 10000' /data/app.db 'PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, body TEXT NOT NULL, pad BLOB NOT NULL); CREATE TABLE IF NOT EXISTS lines (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, body TEXT NOT NULL);'
while true; do
  sqlite3 -cmd '.timeout 10000' /data/app.db "BEGIN IMMEDIATE; INSERT INTO orders SELECT n, 'order ' || n, randomblob(3000) FROM (SELECT coalesce(max(id), 0) + 1 AS n FROM orders); INSERT INTO lines (order_id, body) SELECT max(id), 'first line of ' || max(id) FROM orders; INSERT INTO lines (order_id, body) SELECT max(id), 'second line of ' || max(id) FROM orders; COMMIT;"
done"#;

fn writer_manifest(extra: &str) -> String {
    format!(
        r#"app = "{{app}}"

[accessories.writer]
image = "{DB_IMAGE}"
command = ["sh", "-c", {writer}]
volumes = ["data:/data"]
stop_timeout = "1s"

[backups.db]
source = {{ sqlite = {{ service = "writer", path = "/data/app.db" }} }}
keep = {{ last = 5 }}
{extra}"#,
        writer = toml_string(WRITER)
    )
}

/// A TOML basic string (JSON's escapes are valid TOML).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn json_of(run: &Run) -> serde_json::Value {
    run.json()
}

/// Rows of a SQLite file, read with the sqlite3 tool: `id|body|hex(pad)` per order.
fn orders(db: &Path, up_to: i64) -> Vec<String> {
    let output = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(format!(
            "SELECT id || '|' || body || '|' || hex(pad) FROM orders WHERE id <= {up_to} ORDER BY id"
        ))
        .output()
        .expect("sqlite3 is missing: scripts/install-test-peers installs it");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sqlite_value(db: &Path, sql: &str) -> String {
    try_sqlite_value(db, sql).unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// For polling a database that may not have its tables yet.
fn try_sqlite_value(db: &Path, sql: &str) -> Result<String, String> {
    let output = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .map_err(|e| format!("cannot run sqlite3: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn deploy(agent: &Agent, app: &AppDir) {
    agent.berth_in(app.path(), &["deploy"]).success();
}

fn backup_list(agent: &Agent, app: &AppDir) -> serde_json::Value {
    json_of(
        agent
            .berth_in(app.path(), &["--json", "backup", "list"])
            .success(),
    )
}

#[test]
fn sqlite_under_a_live_writer_is_backed_up_consistently_and_restored_row_by_row() {
    require_db_image();
    let agent = Agent::start();
    let app = agent.app("bksql");
    let user = UserKey::new();
    app.write(&writer_manifest(&format!(
        "\n[encryption]\nrecipients = [\"{}\"]\n",
        user.recipient
    )));
    deploy(&agent, &app);
    let live = volume_dir(&format!("{}_data", app.name)).join("app.db");
    wait_until(
        "the writer to fill the database",
        Duration::from_secs(30),
        || {
            live.exists()
                && try_sqlite_value(&live, "SELECT count(*) FROM orders")
                    .ok()
                    .and_then(|count| count.parse::<i64>().ok())
                    .unwrap_or(0)
                    > 300
        },
    );

    // Two backups while the writer keeps writing.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let before: i64 = sqlite_value(&live, "SELECT max(id) FROM orders")
            .parse()
            .unwrap();
        let run = agent.berth_in(app.path(), &["--json", "backup", "run", "db"]);
        run.success();
        let after: i64 = sqlite_value(&live, "SELECT max(id) FROM orders")
            .parse()
            .unwrap();
        let json = json_of(&run);
        let result = &json["backups"]["runs"][0];
        assert_eq!(result["status"], "ok", "{json}");
        assert!(
            result["copies"][0]["check"]
                .as_str()
                .unwrap()
                .contains("integrity_check ok"),
            "{json}"
        );
        assert!(after > before, "the writer kept writing during the backup");
        ids.push(result["id"].as_str().unwrap().to_owned());
    }

    // Restored to a file: consistent (every order has both lines) and, row by row, the
    // live database's first N orders.
    let restored = app.path().join("restored.db");
    agent
        .berth_in(
            app.path(),
            &[
                "restore",
                "db",
                "--id",
                &ids[1],
                "--to",
                restored.to_str().unwrap(),
            ],
        )
        .success();
    assert_eq!(sqlite_value(&restored, "PRAGMA integrity_check"), "ok");
    let n: i64 = sqlite_value(&restored, "SELECT count(*) FROM orders")
        .parse()
        .unwrap();
    assert_eq!(
        sqlite_value(&restored, "SELECT max(id) FROM orders"),
        n.to_string(),
        "orders are contiguous"
    );
    assert_eq!(
        sqlite_value(&restored, "SELECT count(*) FROM lines"),
        (2 * n).to_string(),
        "a backup never holds half a transaction"
    );
    let restored_rows = orders(&restored, n);
    let live_rows = orders(&live, n);
    assert_eq!(restored_rows.len(), n as usize);
    assert!(
        restored_rows == live_rows,
        "the restored rows differ from the live ones"
    );

    // The same backup opens with the standard tools and the user's own key.
    let meta_path = agent
        .dir
        .path()
        .join(format!("backups/{}/db/{}.json", app.name, ids[1]));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let object = meta_path.with_file_name(meta["object"].as_str().unwrap());
    assert_eq!(sha256_file(&object), meta["sha256"].as_str().unwrap());
    let by_hand = app.path().join("by-hand.db");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -d -q -o {}",
            user.file.display(),
            object.display(),
            by_hand.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "age | zstd could not open the backup");
    assert_eq!(sqlite_value(&by_hand, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        sqlite_value(&by_hand, "SELECT count(*) FROM orders"),
        n.to_string()
    );

    // Over the live database: refused without --force, then done with a safety backup.
    let refused = agent.berth_in(app.path(), &["restore", "db", "--id", &ids[0]]);
    refused.failure(2);
    assert!(
        refused.stderr.contains("holds live data"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    // A refusal changed nothing: it is no failure, and status stays green.
    let status = agent.berth_in(app.path(), &["--json", "status"]);
    status.success();
    assert!(!status.stdout.contains("\"failed\""), "{}", status.stdout);
    let first_n: i64 = {
        let list = backup_list(&agent, &app);
        let first = list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == ids[0].as_str())
            .unwrap()
            .clone();
        assert_eq!(first["copies"][0]["storage"], "local");
        // The first backup's order count, read from a restored copy.
        let copy = app.path().join("first.db");
        agent
            .berth_in(
                app.path(),
                &[
                    "restore",
                    "db",
                    "--id",
                    &ids[0],
                    "--to",
                    copy.to_str().unwrap(),
                ],
            )
            .success();
        sqlite_value(&copy, "SELECT count(*) FROM orders")
            .parse()
            .unwrap()
    };
    let run = agent.berth_in(
        app.path(),
        &["--json", "restore", "db", "--id", &ids[0], "--force"],
    );
    run.success();
    let json = json_of(&run);
    let restored = &json["backups"]["restored"];
    let safety = restored["safety_backup"].as_str().unwrap().to_owned();
    let actions = restored["actions"].to_string();
    assert!(actions.contains("stopped writer"), "{actions}");
    assert!(actions.contains("started writer again"), "{actions}");
    // The writer started again on the restored data: it continues from the first backup's
    // last order, and lines still pair with orders.
    wait_until("the writer to resume", Duration::from_secs(20), || {
        sqlite_value(&live, "SELECT count(*) FROM orders")
            .parse::<i64>()
            .unwrap_or(0)
            > first_n
    });
    assert_eq!(
        orders(&live, first_n).len(),
        first_n as usize,
        "the restored rows are there"
    );
    assert_eq!(
        sqlite_value(&live, "PRAGMA integrity_check"),
        "ok",
        "the live database is sound after the swap"
    );
    assert_eq!(
        sqlite_value(
            &live,
            "SELECT (SELECT count(*) FROM lines) = 2 * (SELECT count(*) FROM orders)"
        ),
        "1",
        "lines still pair with orders after the swap"
    );
    // The safety backup holds what was replaced, and is listed as such.
    let list = backup_list(&agent, &app);
    let safety_entry = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == safety.as_str())
        .unwrap_or_else(|| panic!("the safety backup {safety} is not listed: {list}"))
        .clone();
    assert_eq!(safety_entry["reason"], "safety");
    // Audit: the restore and its safety backup.
    let audit = agent.berth(&["--json", "audit"]).success().stdout.clone();
    assert!(audit.contains("\"restore\""), "{audit}");
    assert!(audit.contains("\"safety-backup\""), "{audit}");
}

fn pg_manifest(extra: &str) -> String {
    format!(
        r#"app = "{{app}}"

[accessories.db]
image = "{DB_IMAGE}"
env = {{ POSTGRES_DB = "shop" }}
volumes = ["pgdata:/var/lib/postgresql/data"]
healthcheck = {{ command = ["pg_isready", "-U", "postgres", "-d", "shop"], interval = "500ms", start_timeout = "60s" }}
stop_timeout = "5s"

[backups.pg]
source = {{ postgres = {{ service = "db", database = "shop" }} }}
{extra}"#
    )
}

#[test]
fn postgres_in_an_accessory_is_dumped_verified_in_a_scratch_database_and_restored_identically() {
    require_db_image();
    let agent = Agent::start();
    let app = agent.app("bkpg");
    app.write(&pg_manifest(""));
    deploy(&agent, &app);
    let db = format!("{}-db", app.name);
    docker_exec(
        &db,
        &[
            "psql",
            "-U",
            "postgres",
            "-d",
            "shop",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), tags text[]);
             INSERT INTO items (name, price, tags) SELECT 'item ' || g, g * 1.5, ARRAY['t' || (g % 7)] FROM generate_series(1, 5000) g;
             CREATE INDEX items_name ON items (name);",
        ],
    );
    let query = [
        "psql",
        "-U",
        "postgres",
        "-d",
        "shop",
        "-tA",
        "-c",
        "SELECT id, name, price, tags FROM items ORDER BY id",
    ];
    let before = docker_exec(&db, &query);

    let run = agent.berth_in(app.path(), &["--json", "backup", "run"]);
    run.success();
    let json = json_of(&run);
    let check = json["backups"]["runs"][0]["copies"][0]["check"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        check.contains("restored into a scratch database: 1 tables"),
        "{check}"
    );
    // The scratch database is gone again.
    let databases = docker_exec(
        &db,
        &[
            "psql",
            "-U",
            "postgres",
            "-tA",
            "-c",
            "SELECT datname FROM pg_database",
        ],
    );
    assert!(!databases.contains("berth_verify"), "{databases}");

    // Damage the live data, then restore: identical to before.
    docker_exec(
        &db,
        &[
            "psql",
            "-U",
            "postgres",
            "-d",
            "shop",
            "-c",
            "DELETE FROM items WHERE id % 2 = 0; UPDATE items SET name = 'broken' WHERE id = 1;",
        ],
    );
    assert_ne!(docker_exec(&db, &query), before);
    agent.berth_in(app.path(), &["restore", "pg"]).failure(2);
    let run = agent.berth_in(app.path(), &["--json", "restore", "pg", "--force"]);
    run.success();
    assert!(json_of(&run)["backups"]["restored"]["safety_backup"].is_string());
    assert_eq!(docker_exec(&db, &query), before, "the data is identical");

    // Re-verification reads every copy back again (the safety backup too).
    let run = agent.berth_in(app.path(), &["--json", "backup", "verify"]);
    run.success();
    let verified = json_of(&run)["backups"]["verified"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(verified, 2);
}

#[test]
fn postgres_on_the_server_is_dumped_through_a_url_and_restored() {
    let server = HostPostgres::start();
    server.sql("postgres", "CREATE DATABASE shop");
    server.sql(
        "shop",
        "CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, joined date);
         INSERT INTO customers SELECT g, 'user' || g || '@example.com', date '2026-01-01' + g FROM generate_series(1, 2000) g;",
    );
    let query = "SELECT id, email, joined FROM customers ORDER BY id";
    let before = server.sql("shop", query);
    let agent = Agent::start();
    let app = agent.app("bkpgurl");
    // Nothing deployed: the manifest the CLI sends is enough for backups.
    app.write(&format!(
        r#"app = "{{app}}"

[services.web]
build = "."
port = 8080

[backups.shop]
source = {{ postgres = {{ url = "postgres://postgres@127.0.0.1:{}/shop" }} }}
"#,
        server.port
    ));
    let run = agent.berth_in(app.path(), &["--json", "backup", "run", "shop"]);
    run.success();
    let json = json_of(&run);
    assert_eq!(json["backups"]["runs"][0]["status"], "ok", "{json}");
    assert!(
        json["backups"]["runs"][0]["source"]
            .as_str()
            .unwrap()
            .contains("this server")
    );

    // To a file: a pg_dump archive pg_restore reads.
    let file = app.path().join("shop.pgdump");
    agent
        .berth_in(
            app.path(),
            &["restore", "shop", "--to", file.to_str().unwrap()],
        )
        .success();
    let listed = Command::new("pg_restore")
        .arg("--list")
        .arg(&file)
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("TABLE public customers"));

    server.sql("shop", "TRUNCATE customers");
    agent
        .berth_in(app.path(), &["restore", "shop", "--force"])
        .success();
    assert_eq!(server.sql("shop", query), before, "the data is identical");
}

#[test]
fn mariadb_in_an_accessory_is_dumped_and_restored() {
    require_db_image();
    let agent = Agent::start();
    let app = agent.app("bkmaria");
    app.write(&format!(
        r#"app = "{{app}}"

[accessories.db]
image = "{DB_IMAGE}"
command = ["berth-db", "mariadb"]
env = {{ MARIADB_DATABASE = "shop" }}
volumes = ["mariadata:/var/lib/mysql"]
healthcheck = {{ command = ["mariadb-admin", "ping"], interval = "500ms", start_timeout = "90s" }}
stop_timeout = "5s"

[backups.maria]
source = {{ mysql = {{ service = "db", database = "shop" }} }}
"#
    ));
    deploy(&agent, &app);
    let db = format!("{}-db", app.name);
    docker_exec(
        &db,
        &[
            "mariadb",
            "shop",
            "-e",
            "CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, customer VARCHAR(50), total DECIMAL(10,2), note TEXT);
             INSERT INTO orders (customer, total, note) VALUES ('ada', 12.50, 'first'), ('grace', 99.99, 'quote '' and \\\\ backslash'), ('linus', 0.01, NULL);",
        ],
    );
    let query = [
        "mariadb",
        "shop",
        "-N",
        "-e",
        "SELECT * FROM orders ORDER BY id",
    ];
    let before = docker_exec(&db, &query);
    let run = agent.berth_in(app.path(), &["--json", "backup", "run"]);
    run.success();
    let check = json_of(&run)["backups"]["runs"][0]["copies"][0]["check"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(check.contains("Dump completed"), "{check}");
    docker_exec(
        &db,
        &["mariadb", "shop", "-e", "DELETE FROM orders WHERE id > 1"],
    );
    agent
        .berth_in(app.path(), &["restore", "maria", "--force"])
        .success();
    assert_eq!(docker_exec(&db, &query), before, "the data is identical");
}

const FILES: &str = r#"mkdir -p /srv/up/docs && [ -f /srv/up/docs/a.txt ] || { echo first > /srv/up/docs/a.txt; echo second > /srv/up/docs/b.txt; ln -s docs/a.txt /srv/up/link; }; exec sleep infinity"#;

fn files_manifest(extra: &str) -> String {
    format!(
        r#"app = "{{app}}"

[accessories.files]
image = "{DB_IMAGE}"
command = ["sh", "-c", {files}]
volumes = ["uploads:/srv/up"]
stop_timeout = "1s"
{extra}"#,
        files = toml_string(FILES)
    )
}

fn container_paused(name: &str) -> bool {
    let output = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Paused}}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "true"
}

#[test]
fn a_volume_round_trips_with_its_service_paused_and_a_command_before() {
    require_db_image();
    let agent = Agent::start();
    let app = agent.app("bkvol");
    app.write(&files_manifest(
        r#"
[backups.uploads]
source = { volume = { name = "uploads", pause = true, service = "files", before = ["sh", "-c", "date > /srv/up/backed-up-at"] } }
"#,
    ));
    deploy(&agent, &app);
    let container = format!("{}-files", app.name);
    wait_until("the files to be written", Duration::from_secs(20), || {
        volume_dir(&format!("{}_uploads", app.name))
            .join("docs/b.txt")
            .exists()
    });
    let run = agent.berth_in(app.path(), &["--json", "backup", "run"]);
    run.success();
    let json = json_of(&run);
    assert!(
        json["backups"]["runs"][0]["source"]
            .as_str()
            .unwrap()
            .contains("paused"),
        "{json}"
    );
    assert!(!container_paused(&container), "the container runs again");
    let dir = volume_dir(&format!("{}_uploads", app.name));
    assert!(dir.join("backed-up-at").exists(), "`before` ran first");

    std::fs::remove_file(dir.join("docs/a.txt")).unwrap();
    std::fs::write(dir.join("docs/b.txt"), "changed").unwrap();
    std::fs::write(dir.join("new.txt"), "not in the backup").unwrap();
    agent
        .berth_in(app.path(), &["restore", "uploads", "--force"])
        .success();
    assert_eq!(
        std::fs::read_to_string(dir.join("docs/a.txt")).unwrap(),
        "first\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("docs/b.txt")).unwrap(),
        "second\n"
    );
    assert!(
        !dir.join("new.txt").exists(),
        "the volume holds what the backup held"
    );
    assert_eq!(
        std::fs::read_link(dir.join("link")).unwrap(),
        Path::new("docs/a.txt")
    );
    // The service sees it too.
    wait_until(
        "the accessory to run again",
        Duration::from_secs(20),
        || {
            Command::new("docker")
                .args(["exec", &container, "cat", "/srv/up/docs/a.txt"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout == b"first\n")
        },
    );
}

fn s3_storage(s3: &S3Server) -> String {
    format!(
        "\n[storage.offsite]\ns3 = {{ bucket = \"{}\", endpoint = \"{}\", part_size = \"5m\", prefix = \"prod\" }}\n",
        s3.bucket,
        s3.endpoint()
    )
}

fn set_s3_secrets(agent: &Agent, app: &AppDir, secret: &str) {
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "AWS_ACCESS_KEY_ID", "--value", S3_KEY],
        )
        .success();
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "AWS_SECRET_ACCESS_KEY", "--value", secret],
        )
        .success();
}

#[test]
fn s3_storage_takes_multipart_uploads_and_a_new_server_restores_from_the_bucket_alone() {
    require_db_image();
    let s3 = S3Server::start();
    let user = UserKey::new();
    let agent = Agent::start();
    let app = agent.app("bks3");
    let manifest = files_manifest(&format!(
        r#"
[encryption]
recipients = ["{}"]
{}
[backups.uploads]
source = {{ volume = {{ name = "uploads" }} }}
to = ["local", "offsite"]
keep = {{ last = 3 }}
"#,
        user.recipient,
        s3_storage(&s3)
    ));
    app.write(&manifest);
    set_s3_secrets(&agent, &app, S3_SECRET);
    deploy(&agent, &app);
    let volume = format!("{}_uploads", app.name);
    wait_until("the files to be written", Duration::from_secs(20), || {
        volume_dir(&volume).join("docs/b.txt").exists()
    });
    // Incompressible data larger than two 5 MiB parts.
    let blob = volume_dir(&volume).join("blob.bin");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 12000000 /dev/urandom > {}",
            blob.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let blob_sha = sha256_file(&blob);

    let run = agent.berth_in(app.path(), &["--json", "backup", "run"]);
    run.success();
    let json = json_of(&run);
    let result = &json["backups"]["runs"][0];
    assert_eq!(result["status"], "ok", "{json}");
    let copies = result["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|c| c["ok"] == true), "{json}");
    let id = result["id"].as_str().unwrap().to_owned();
    let key = format!("prod/{}/uploads/{id}.tar.zst.age", app.name);
    assert!(
        s3.etag(&key).ends_with("-3"),
        "a 12 MB backup goes up in three 5 MiB parts (etag {})",
        s3.etag(&key)
    );
    let local_object = agent
        .dir
        .path()
        .join(format!("backups/{}/uploads/{id}.tar.zst.age", app.name));
    assert_eq!(
        sha256_file(&local_object),
        sha256_file(&s3.object_path(&key)),
        "both copies hold the same bytes"
    );
    let list = backup_list(&agent, &app);
    let storages: Vec<&str> = list["backups"][0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["storage"].as_str().unwrap())
        .collect();
    assert_eq!(storages, ["local", "offsite"]);

    // The operator kept a copy of the server's backup key, as README says to.
    let kept = tempfile::tempdir().unwrap();
    let old_key = kept.path().join("backup.key");
    std::fs::copy(agent.dir.path().join("backup.key"), &old_key).unwrap();

    // The server is lost: its agent, containers and volume are gone.
    let agent_dir = agent.dir.path().to_owned();
    drop(agent);
    assert!(!agent_dir.exists());
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", &volume])
        .output();

    // A new server: only the manifest, the bucket's credentials and the user's identity.
    let fresh = Agent::start();
    fresh.track(&app.name);
    set_s3_secrets(&fresh, &app, S3_SECRET);
    let list = json_of(
        fresh
            .berth_in(app.path(), &["--json", "backup", "list"])
            .success(),
    );
    assert_eq!(list["backups"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["backups"][0]["copies"][0]["storage"], "offsite");
    // Signed by the lost server's key, which this one does not hold (yet).
    assert_eq!(
        list["backups"][0]["copies"][0]["untrusted"], "unknown-key",
        "{list}"
    );
    let denied = fresh.berth_in(
        app.path(),
        &["--json", "restore", "uploads", "--allow-untrusted"],
    );
    denied.failure(1);
    let message = json_of(&denied)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("none of the given identities"),
        "{message}"
    );
    assert!(message.contains("--identity"), "{message}");
    // The user's own key decrypts, but cannot vouch for the record: refused, saying why.
    let untrusted = fresh.berth_in(
        app.path(),
        &[
            "restore",
            "uploads",
            "--identity",
            user.file.to_str().unwrap(),
        ],
    );
    assert_ne!(untrusted.code, 0);
    assert!(
        untrusted.stderr.contains("cannot vouch") && untrusted.stderr.contains("--allow-untrusted"),
        "{}",
        untrusted.stderr
    );
    // Verifying without the old key cannot vouch for the backup, which is not the same as
    // the backup failing: it is not marked as failed. With the key it verifies (and this
    // server signs it as its own from then on).
    let unverified = fresh.berth_in(app.path(), &["backup", "verify", "uploads"]);
    assert_ne!(unverified.code, 0);
    assert!(
        unverified.stderr.contains("--identity") || unverified.stdout.contains("--identity"),
        "{}\n{}",
        unverified.stdout,
        unverified.stderr
    );
    let list = json_of(
        fresh
            .berth_in(app.path(), &["--json", "backup", "list"])
            .success(),
    );
    assert!(
        list["backups"][0]["copies"][0]["verify_error"].is_null(),
        "not marked as failed: {list}"
    );
    fresh
        .berth_in(
            app.path(),
            &[
                "backup",
                "verify",
                "uploads",
                "--identity",
                old_key.to_str().unwrap(),
            ],
        )
        .success();

    // The lost server's key both decrypts and vouches.
    fresh
        .berth_in(
            app.path(),
            &[
                "restore",
                "uploads",
                "--identity",
                old_key.to_str().unwrap(),
            ],
        )
        .success();
    let restored = volume_dir(&volume);
    assert_eq!(sha256_file(&restored.join("blob.bin")), blob_sha);
    assert_eq!(
        std::fs::read_to_string(restored.join("docs/a.txt")).unwrap(),
        "first\n"
    );
    // And the app comes up on the restored volume.
    deploy(&fresh, &app);
    assert_eq!(
        docker_exec(
            &format!("{}-files", app.name),
            &["cat", "/srv/up/docs/b.txt"]
        ),
        "second\n"
    );
}

#[test]
fn unreachable_or_refusing_s3_fails_the_backup_and_says_why() {
    require_db_image();
    let mut s3 = S3Server::start();
    let agent = Agent::start();
    let app = agent.app("bks3fail");
    app.write(&files_manifest(&format!(
        "{}\n[backups.uploads]\nsource = {{ volume = {{ name = \"uploads\" }} }}\nto = [\"local\", \"offsite\"]\n",
        s3_storage(&s3)
    )));
    deploy(&agent, &app);

    // Wrong credentials.
    set_s3_secrets(&agent, &app, "not-the-secret");
    let run = agent.berth_in(app.path(), &["--json", "backup", "run"]);
    run.failure(1);
    let json = json_of(&run);
    let result = &json["backups"]["runs"][0];
    assert_eq!(result["status"], "partial", "{json}");
    assert_eq!(result["copies"][0]["ok"], true);
    assert_eq!(
        result["copies"][1]["cause"], "credentials-refused",
        "{json}"
    );
    assert!(
        result["copies"][1]["error"]
            .as_str()
            .unwrap()
            .contains("AWS_SECRET_ACCESS_KEY")
    );

    // The server is down.
    set_s3_secrets(&agent, &app, S3_SECRET);
    s3.stop();
    let run = agent.berth_in(app.path(), &["--json", "backup", "run"]);
    run.failure(1);
    let json = json_of(&run);
    assert_eq!(
        json["backups"]["runs"][0]["copies"][1]["cause"], "unreachable",
        "{json}"
    );
    // Only the good local copies are listed; nothing claims to be on offsite.
    let list = backup_list(&agent, &app);
    for backup in list["backups"].as_array().unwrap() {
        let storages: Vec<&str> = backup["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["storage"].as_str().unwrap())
            .collect();
        assert_eq!(storages, ["local"], "{list}");
    }
    // Loud everywhere else too: status (exit 1) and the audit log.
    let status = agent.berth(&["status"]);
    status.failure(1);
    assert!(
        status.stdout.contains("backup partial"),
        "{}",
        status.stdout
    );
    let audit = agent.berth(&["audit"]).success().stdout.clone();
    assert!(audit.contains("partial"), "{audit}");
}

#[test]
fn failing_dumps_full_disks_and_flipped_bytes_are_reported_never_kept() {
    require_db_image();
    let agent = Agent::start();
    let app = agent.app("bkfail");
    let small = tempfile::Builder::new()
        .prefix("berth-full-")
        .tempdir_in("/tmp")
        .unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(small.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "this test mounts a 2 MiB tmpfs to fill a disk; it needs root (as CI runs)"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(small.path());
    app.write(&files_manifest(&format!(
        r#"
[storage.small]
path = "{}"

[backups.failing]
source = {{ command = {{ service = "files", dump = ["sh", "-c", "echo partial; echo 'pg_dump: error: connection to server failed' >&2; exit 3"] }} }}

[backups.silent]
source = {{ command = {{ service = "files", dump = ["true"] }} }}

[backups.full]
source = {{ volume = {{ name = "uploads" }} }}
to = ["small"]

[backups.uploads]
source = {{ volume = {{ name = "uploads" }} }}
"#,
        small.path().display()
    )));
    deploy(&agent, &app);
    let volume = volume_dir(&format!("{}_uploads", app.name));
    wait_until("the files to be written", Duration::from_secs(20), || {
        volume.join("docs/b.txt").exists()
    });

    let expect_failure = |name: &str, cause: &str, words: &[&str]| {
        let run = agent.berth_in(app.path(), &["--json", "backup", "run", name]);
        run.failure(1);
        let json = json_of(&run);
        let result = &json["backups"]["runs"][0];
        assert_eq!(result["status"], "failed", "{json}");
        assert_eq!(result["cause"], cause, "{json}");
        let error = result["error"].as_str().unwrap();
        for word in words {
            assert!(error.contains(word), "`{word}` not in: {error}");
        }
    };
    expect_failure(
        "failing",
        "source-failed",
        &["status 3", "connection to server failed"],
    );
    expect_failure("silent", "source-failed", &["printed nothing"]);
    // 4 MB of incompressible data cannot fit in 2 MiB.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 4000000 /dev/urandom > {}",
            volume.join("big.bin").display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    expect_failure("full", "disk-full", &["disk full", "small"]);
    let leftovers: Vec<String> = walk(small.path());
    assert!(
        leftovers.is_empty(),
        "nothing partial is left: {leftovers:?}"
    );
    let list = backup_list(&agent, &app);
    assert!(list["backups"].as_array().unwrap().is_empty(), "{list}");

    // A flipped byte in a stored backup: verification names it.
    let run = agent.berth_in(app.path(), &["--json", "backup", "run", "uploads"]);
    run.success();
    let id = json_of(&run)["backups"]["runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let object = agent
        .dir
        .path()
        .join(format!("backups/{}/uploads/{id}.tar.zst.age", app.name));
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&object, bytes).unwrap();
    let run = agent.berth_in(app.path(), &["--json", "backup", "verify", "uploads"]);
    run.failure(1);
    let json = json_of(&run);
    let verified = &json["backups"]["verified"][0];
    assert_eq!(verified["ok"], false);
    assert_eq!(verified["cause"], "checksum-mismatch", "{json}");
    let error = verified["error"].as_str().unwrap();
    assert!(error.contains(&id) && error.contains("on local"), "{error}");
    // The copy is flagged in the list and in status, and a restore from it fails cleanly.
    let list = backup_list(&agent, &app);
    assert!(
        list["backups"][0]["copies"][0]["verify_error"].is_string(),
        "{list}"
    );
    let status = agent.berth(&["status"]);
    status.failure(1);
    assert!(
        status.stdout.contains("failed its last verification"),
        "{}",
        status.stdout
    );
    let target = app.path().join("out");
    let restore = agent.berth_in(
        app.path(),
        &["restore", "uploads", "--to", target.to_str().unwrap()],
    );
    restore.failure(1);
    assert!(restore.stderr.contains("corrupt"), "{}", restore.stderr);
    assert!(
        !target.exists() || walk(&target).is_empty(),
        "nothing half-restored"
    );
}

/// Every file under `dir`, at any depth (directories themselves are not listed).
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(walk(&entry.path()));
            } else {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

#[test]
fn berths_own_state_is_backed_up_and_a_new_agent_starts_from_it() {
    let agent = Agent::start();
    let app = agent.app("bkstate");
    app.write(
        r#"app = "{app}"

[services.web]
build = "."
port = 8080

[backups.state]
source = "berth"
"#,
    );
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "API_KEY", "--value", "s3cr3t-value"],
        )
        .success();
    agent
        .berth_in(app.path(), &["--json", "backup", "run"])
        .success();
    let mut second = Agent::unstarted();
    second.track(&app.name);
    let target = second.dir.path().join("restored");
    agent
        .berth_in(
            app.path(),
            &["restore", "state", "--to", target.to_str().unwrap()],
        )
        .success();
    for file in ["state.db", "secrets.key", "backup.key", "agent-id"] {
        assert!(target.join(file).exists(), "{file} was restored");
    }
    // Restoring over the running agent's own state is refused with the way to do it.
    let refused = agent.berth_in(app.path(), &["restore", "state", "--force"]);
    refused.failure(2);
    assert!(refused.stderr.contains("--to"), "{}", refused.stderr);

    // A new agent on the restored data directory knows the app's secrets.
    for entry in std::fs::read_dir(&target).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), second.dir.path().join(entry.file_name())).unwrap();
    }
    drop(agent);
    second.spawn_with(&[]);
    let value = second.berth_in(app.path(), &["secrets", "get", "API_KEY"]);
    value.success();
    assert_eq!(value.stdout.trim(), "s3cr3t-value");
}

#[test]
fn scheduled_backups_run_on_time_and_retention_prunes_them() {
    require_db_image();
    let agent = Agent::start();
    let app = agent.app("bksched");
    app.write(&files_manifest(
        r#"
[backups.uploads]
source = { volume = { name = "uploads" } }
schedule = "*/2 * * * * *"
keep = { last = 2 }
"#,
    ));
    deploy(&agent, &app);
    wait_until("three scheduled backups", Duration::from_secs(30), || {
        let audit = agent
            .berth(&["--json", "audit", "-n", "200"])
            .stdout
            .clone();
        audit.matches("\"backup-prune\"").count() >= 3
    });
    let list = backup_list(&agent, &app);
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "keep last 2: {list}");
    assert!(backups.iter().all(|b| b["reason"] == "scheduled"), "{list}");
    let status = json_of(agent.berth(&["--json", "status"]).success());
    let entry = &status["apps"][0]["backups"][0];
    assert_eq!(entry["schedule"], "*/2 * * * * *");
    assert!(entry["next_run"].is_i64(), "{entry}");
    assert!(entry["last_ok"].is_i64(), "{entry}");
}

#[test]
fn a_restore_cut_off_by_an_agent_crash_leaves_no_staging_in_the_volume_and_shows_in_status() {
    require_db_image();
    let mut agent = Agent::start();
    let app = agent.app("bkcut");
    // A service that ignores SIGTERM: stopping it for the restore takes its whole
    // stop_timeout, while the unpacked backup waits next to the live data.
    app.write(
        &files_manifest(
            r#"
[backups.uploads]
source = { volume = { name = "uploads" } }
"#,
        )
        .replace(
            "exec sleep infinity",
            "trap '' TERM; while true; do sleep 1; done",
        )
        .replace("stop_timeout = \"1s\"", "stop_timeout = \"40s\""),
    );
    deploy(&agent, &app);
    let dir = volume_dir(&format!("{}_uploads", app.name));
    wait_until("the files to be written", Duration::from_secs(20), || {
        dir.join("docs/b.txt").exists()
    });
    agent.berth_in(app.path(), &["backup", "run"]).success();
    std::fs::write(dir.join("docs/a.txt"), "changed since\n").unwrap();

    let mut restore = Command::new(crate::harness::BERTH)
        .args(["restore", "uploads", "--force"])
        .current_dir(app.path())
        .env("BERTH_DATA_DIR", agent.dir.path())
        .env_remove("BERTH_AGENT")
        .env("CI", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let volume = dir.parent().unwrap().to_owned();
    let staging = || {
        std::fs::read_dir(&volume)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".berth-"))
            .collect::<Vec<_>>()
    };
    wait_until(
        "the backup to be unpacked next to the live data",
        Duration::from_secs(30),
        || !staging().is_empty(),
    );
    agent.kill();
    let _ = restore.wait();
    assert!(
        !staging().is_empty(),
        "the crash left the staging directory"
    );

    agent.restart();
    assert!(
        staging().is_empty(),
        "the next agent removed it: {:?}",
        staging()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("docs/a.txt")).unwrap(),
        "changed since\n",
        "the live data was not half replaced"
    );
    let status = agent
        .berth_in(app.path(), &["status", "--json"])
        .success()
        .json();
    let last = &status["apps"][0]["backups"][0]["last_run"];
    assert_eq!(last["operation"], "restore", "{status}");
    assert_eq!(last["status"], "failed", "{status}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or("")
            .contains("stopped while this restore ran"),
        "{status}"
    );
}

#[test]
fn an_upload_cut_off_by_an_outage_is_aborted_once_the_bucket_is_back() {
    require_db_image();
    let mut s3 = S3Server::start();
    let agent = Agent::start();
    let app = agent.app("bkupcut");
    // A dump that sends a part's worth, then pauses: the bucket goes away in between.
    app.write(&files_manifest(&format!(
        "{}\n[backups.dump]\nsource = {{ command = {{ service = \"files\", dump = [\"sh\", \"-c\", \"head -c 6000000 /dev/urandom; sleep 4; head -c 6000000 /dev/urandom\"] }} }}\nto = [\"offsite\"]\n",
        s3_storage(&s3)
    )));
    set_s3_secrets(&agent, &app, S3_SECRET);
    deploy(&agent, &app);
    let unfinished = |s3: &S3Server| {
        std::fs::read_dir(s3.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect::<Vec<_>>()
    };

    let backup = Command::new(crate::harness::BERTH)
        .args(["backup", "run", "dump"])
        .current_dir(app.path())
        .env("BERTH_DATA_DIR", agent.dir.path())
        .env_remove("BERTH_AGENT")
        .env("CI", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first part to arrive", Duration::from_secs(30), || {
        unfinished(&s3).iter().any(|n| n.contains(".part-"))
    });
    s3.stop();
    let output = backup.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !unfinished(&s3).is_empty(),
        "the outage left the upload's parts in the bucket"
    );

    s3.restart();
    let run = agent.berth_in(app.path(), &["backup", "run", "dump"]);
    run.success();
    assert!(
        run.stderr.contains("aborted the unfinished upload of"),
        "{}",
        run.stderr
    );
    assert_eq!(
        unfinished(&s3),
        Vec::<String>::new(),
        "nothing is left behind"
    );
    // And the new backup went up whole, in parts.
    let list = backup_list(&agent, &app);
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn prune_refuses_when_the_catalogue_cannot_be_read_instead_of_pruning_blind() {
    let agent = Agent::start();
    let app = agent.app("bkprune");
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"a").unwrap();
    let manifest = |keep: &str| {
        format!(
            "{}\n[backups.files]\nsource = {{ directory = {{ path = \"{}\" }} }}\n{keep}\n",
            crate::harness::web(""),
            data.path().display()
        )
    };
    app.write(&manifest(""));
    deploy(&agent, &app);
    for _ in 0..3 {
        agent.berth_in(app.path(), &["backup", "run"]).success();
    }
    let stored = || {
        std::fs::read_dir(
            agent
                .dir
                .path()
                .join("backups")
                .join(&app.name)
                .join("files"),
        )
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count()
    };
    assert_eq!(stored(), 3);

    // The catalogue cannot be read (here: its table renamed under the running agent).
    let state = agent.dir.path().join("state.db");
    let sql = |statement: &str| {
        let output = Command::new("sqlite3")
            .args(["-cmd", ".timeout 10000"])
            .arg(&state)
            .arg(statement)
            .output()
            .expect("sqlite3 is missing: scripts/install-test-peers installs it");
        assert!(output.status.success(), "{output:?}");
    };
    app.write(&manifest("keep = { last = 1 }"));
    sql("ALTER TABLE backup_copies RENAME TO backup_copies_away");
    let run = agent.berth_in(app.path(), &["backup", "prune"]);
    run.failure(1);
    assert!(
        run.stderr
            .contains("the backup catalogue could not be read"),
        "{}",
        run.stderr
    );
    assert_eq!(stored(), 3, "nothing was pruned blind");

    sql("ALTER TABLE backup_copies_away RENAME TO backup_copies");
    agent.berth_in(app.path(), &["backup", "prune"]).success();
    assert_eq!(stored(), 1);
}
