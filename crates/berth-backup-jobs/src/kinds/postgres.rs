//! A PostgreSQL database, in an accessory or on another server: `pg_dump --format=custom`,
//! checked by restoring it into a scratch database (or listing it), put back with
//! `pg_restore` in one transaction while the app keeps running.

use super::*;

pub(crate) struct PostgresDatabase<'a> {
    pub db: &'a Database,
}

#[async_trait]
impl SourceKind for PostgresDatabase<'_> {
    fn content(&self) -> ContentKind {
        ContentKind::PostgresDump
    }

    async fn prepare(&self, backups: &Backups, manifest: &Manifest) -> Result<Prepared, OpError> {
        let db = self.db;
        let access = backups.database_access(manifest, db, true).await?;
        let command = strings(&[
            "pg_dump",
            "--format=custom",
            "-Z0",
            "--no-password",
            "--username",
            &db.user,
            "--dbname",
            &db.database,
        ]);
        let label = format!(
            "postgres database {} in {}",
            db.database,
            access.place.describe()
        );
        Ok(Prepared {
            source: Box::new(CommandDump {
                place: access.place.clone(),
                command,
                env: access.env.clone(),
                kind: self.content(),
                label,
                what: "pg_dump".to_owned(),
            }),
            checker: Box::new(self.check(access)),
            warnings: Arc::default(),
        })
    }

    async fn checker(
        &self,
        backups: &Backups,
        manifest: &Manifest,
    ) -> Result<Box<dyn Consumer>, OpError> {
        let access = backups.database_access(manifest, self.db, true).await?;
        Ok(Box::new(self.check(access)))
    }

    async fn restore(&self, backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError> {
        let db = self.db;
        let access = backups.database_access(job.manifest(), db, true).await?;
        job.set_target(format!(
            "postgres database {} in {}",
            db.database,
            access.place.describe()
        ));
        let tables = access
            .place
            .query(&psql(&db.user, &db.database, USER_TABLES_SQL), &access.env)
            .await
            .map_err(|e| OpError::failed(format!("cannot look at the database: {e}")))?;
        job.guard(tables_held(&tables)).await?;
        let staged = job.stage().await?;
        let step = job
            .progress()
            .step(format!("pg_restore into {}", db.database));
        let command = strings(&[
            "pg_restore",
            "--no-password",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            "--username",
            &db.user,
            "--dbname",
            &db.database,
        ]);
        let ran = access
            .place
            .run(&command, &access.env, Some(feed_file(staged.clone())), None)
            .await;
        let _ = std::fs::remove_file(&staged);
        let outcome = step.finish(ran.map_err(OpError::from))?.0;
        if outcome.exit_code != Some(0) {
            return Err(OpError::failed(format!(
                "pg_restore failed, and its single transaction was rolled back (the database is as it was): {}",
                last_lines(&outcome.stderr)
            )));
        }
        let id = job.backup_id().to_owned();
        job.did(format!(
            "restored {id} into database {} (one transaction)",
            db.database
        ));
        Ok(())
    }
}

impl PostgresDatabase<'_> {
    fn check(&self, access: DatabaseAccess) -> PostgresCheck {
        PostgresCheck {
            place: access.place,
            env: access.env,
            user: self.db.user.clone(),
            by_restore: self.db.verify_by_restore,
        }
    }
}

/// Restores a pg_dump archive into a scratch database (or lists it), then drops it.
pub(super) struct PostgresCheck {
    pub(super) place: Place,
    pub(super) env: Vec<(String, String)>,
    pub(super) user: String,
    pub(super) by_restore: bool,
}

#[async_trait]
impl Consumer for PostgresCheck {
    async fn consume(&self, input: PlainReceiver) -> Result<String, String> {
        let user = self.user.clone();
        if !self.by_restore {
            let command = strings(&["pg_restore", "--list"]);
            let (outcome, stdout) = self
                .place
                .run(&command, &self.env, Some(input), None)
                .await
                .map_err(|e| e.to_string())?;
            if outcome.exit_code != Some(0) {
                return Err(format!(
                    "pg_restore --list failed: {}",
                    last_lines(&outcome.stderr)
                ));
            }
            let entries = stdout
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
                .count();
            return Ok(format!("pg_restore --list reads {entries} entries"));
        }
        let scratch = format!("berth_verify_{:08x}", rand::random::<u32>());
        self.place
            .query(
                &strings(&["createdb", "--no-password", "--username", &user, &scratch]),
                &self.env,
            )
            .await
            .map_err(|e| format!("cannot create a scratch database to restore into: {e}"))?;
        let restored = async {
            let command = strings(&[
                "pg_restore",
                "--no-password",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--username",
                &user,
                "--dbname",
                &scratch,
            ]);
            let (outcome, _) = self
                .place
                .run(&command, &self.env, Some(input), None)
                .await
                .map_err(|e| e.to_string())?;
            if outcome.exit_code != Some(0) {
                return Err(format!(
                    "it does not restore into a scratch database: {}",
                    last_lines(&outcome.stderr)
                ));
            }
            let tables = self
                .place
                .query(&psql(&user, &scratch, USER_TABLES_SQL), &self.env)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "restored into a scratch database: {} tables",
                tables.trim()
            ))
        }
        .await;
        if let Err(e) = self
            .place
            .query(
                &strings(&[
                    "dropdb",
                    "--no-password",
                    "--if-exists",
                    "--username",
                    &user,
                    &scratch,
                ]),
                &self.env,
            )
            .await
        {
            tracing::warn!(error = %e, scratch, "cannot drop the scratch database");
        }
        restored
    }
}

pub(crate) const USER_TABLES_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";

pub(crate) fn psql(user: &str, database: &str, sql: &str) -> Vec<String> {
    strings(&[
        "psql",
        "--no-password",
        "--no-psqlrc",
        "--tuples-only",
        "--no-align",
        "--username",
        user,
        "--dbname",
        database,
        "--command",
        sql,
    ])
}
