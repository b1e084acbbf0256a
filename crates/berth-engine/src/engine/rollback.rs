//! Which release a rollback returns to, and what it changes besides the code.

use crate::engine::{Engine, release_manifest};
use crate::error::OpError;
use berth_api::RollbackPlan;
use berth_state::{Release, ReleaseStatus};

impl Engine {
    /// The live release and the one a rollback returns to: `release`, or the newest one
    /// that was live before the current one.
    pub(crate) fn rollback_target(
        &self,
        app: &str,
        release: Option<i64>,
    ) -> Result<(Release, Release), OpError> {
        let live = self.store().live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no live release to roll back from"))
        })?;
        let target = match release {
            Some(number) => self.store().release(app, number)?.ok_or_else(|| {
                OpError::not_found(format!("app {app} has no release {number}"))
                    .hint("`berth releases` lists them")
            })?,
            None => self
                .store()
                .releases(app, 1000)?
                .into_iter()
                .find(|r| r.number < live.number && r.status == ReleaseStatus::Retired)
                .ok_or_else(|| {
                    OpError::not_found(format!("app {app} has no earlier release to roll back to"))
                })?,
        };
        if target.status == ReleaseStatus::Failed || target.status == ReleaseStatus::Deploying {
            return Err(OpError::invalid(format!(
                "release {} of {app} never went live ({}), so berth will not return to it",
                target.number,
                target.status.as_str()
            ))
            .hint("`berth releases` shows which releases were live"));
        }
        if target.number == live.number {
            return Err(OpError::invalid(format!(
                "release {} is already live",
                target.number
            )));
        }
        Ok((live, target))
    }

    /// How release `to`'s manifest differs from release `from`'s, for any two recorded
    /// releases of `app` (the console's release comparison).
    pub fn compare_releases(&self, app: &str, from: i64, to: i64) -> Result<RollbackPlan, OpError> {
        let store = self.store();
        let find = |number: i64| {
            store.release(app, number)?.ok_or_else(|| {
                OpError::not_found(format!("app {app} has no release {number}"))
                    .hint("`berth releases` lists them")
            })
        };
        let (older, newer) = (find(from)?, find(to)?);
        Ok(RollbackPlan {
            app: app.to_owned(),
            from: older.number,
            from_version: older.version.clone(),
            to: newer.number,
            to_version: newer.version.clone(),
            changes: berth_manifest::changes(
                &release_manifest(&older)?,
                &release_manifest(&newer)?,
            ),
        })
    }

    /// What `berth rollback` shows before it asks: a rollback brings the old release's whole
    /// manifest back (its environment, secrets wiring, routes and backups), not only its code.
    pub fn rollback_plan(&self, app: &str, release: Option<i64>) -> Result<RollbackPlan, OpError> {
        let (live, target) = self.rollback_target(app, release)?;
        Ok(RollbackPlan {
            app: app.to_owned(),
            from: live.number,
            from_version: live.version.clone(),
            to: target.number,
            to_version: target.version.clone(),
            // A rollback reuses the old release's images and leaves accessories as they are.
            changes: berth_manifest::changes(
                &release_manifest(&live)?,
                &release_manifest(&target)?,
            )
            .into_iter()
            .filter(|line| !line.get(2..).unwrap_or("").starts_with("accessories."))
            .collect(),
        })
    }
}
