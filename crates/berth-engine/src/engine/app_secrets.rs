//! An app's secrets as operations: listed with the services that use them, set, read,
//! deleted and generated. Values are sealed before they reach the state file, and only names
//! ever reach the audit log. The API and (later) the console call these and only translate.

use super::*;
use berth_api::SecretInfo;

/// Refuses a name that could not be an environment variable.
fn check_secret_name(name: &str) -> Result<(), OpError> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(OpError::invalid(format!("`{name}` is not a valid secret name")).hint(
            "use letters, digits and underscores, not starting with a digit, such as JWT_SECRET_KEY",
        ))
    }
}

impl Engine {
    /// The services and accessories of the live release that use each secret.
    pub fn secret_users(&self, app: &str) -> BTreeMap<String, Vec<String>> {
        self.store
            .live_release(app)
            .ok()
            .flatten()
            .and_then(|r| release_manifest(&r).ok())
            .map(|manifest| manifest.secret_users())
            .unwrap_or_default()
    }

    /// Every secret of `app`, by name, with who uses it (never a value).
    pub fn list_secrets(&self, app: &str) -> Result<Vec<SecretInfo>, OpError> {
        let users = self.secret_users(app);
        Ok(self
            .store
            .secrets(app)?
            .into_iter()
            .map(|s| SecretInfo {
                used_by: users.get(&s.name).cloned().unwrap_or_default(),
                name: s.name,
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect())
    }

    fn secret_info(&self, app: &str, name: &str) -> Result<SecretInfo, OpError> {
        self.list_secrets(app)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| OpError::failed(format!("secret {name} vanished after it was stored")))
    }

    /// Seals and stores `value`; `action` names it in the audit log (`secret.set`, ...).
    pub fn set_secret(
        &self,
        app: &str,
        name: &str,
        value: &str,
        actor: &str,
        action: &str,
    ) -> Result<SecretInfo, OpError> {
        check_secret_name(name)?;
        if value.is_empty() {
            return Err(OpError::invalid("the secret's value is empty"));
        }
        let sealed = self.secrets.seal(value)?;
        self.store.put_secret(app, name, &sealed)?;
        // Only the name is ever recorded.
        self.audit(actor, action, &format!("{app}/{name}"), "ok", "");
        self.secret_info(app, name)
    }

    /// A secret's value, for `berth secrets get`; the read is audited.
    pub fn secret_value(&self, app: &str, name: &str, actor: &str) -> Result<String, OpError> {
        check_secret_name(name)?;
        let ciphertext = self.store.secret_ciphertext(app, name)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no secret {name}")).hint(format!(
                "set it with `berth secrets set {name} --app {app}`"
            ))
        })?;
        let value = self.secrets.open_value(name, &ciphertext)?;
        self.audit(actor, "secret.get", &format!("{app}/{name}"), "ok", "");
        Ok(value)
    }

    /// A secret's value for berth's own use (an alert channel's token): not audited, like
    /// the values a deploy reads.
    pub fn channel_secret(&self, app: &str, name: &str) -> Result<String, OpError> {
        let ciphertext = self.store.secret_ciphertext(app, name)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no secret {name}")).hint(format!(
                "set it with `berth secrets set {name} --app {app}`"
            ))
        })?;
        Ok(self.secrets.open_value(name, &ciphertext)?)
    }

    pub fn delete_secret(&self, app: &str, name: &str, actor: &str) -> Result<(), OpError> {
        check_secret_name(name)?;
        if !self.store.delete_secret(app, name)? {
            return Err(OpError::not_found(format!(
                "app {app} has no secret {name}"
            )));
        }
        self.audit(actor, "secret.rm", &format!("{app}/{name}"), "ok", "");
        Ok(())
    }

    /// Stores a new random value; an existing secret is replaced only when `force`.
    pub fn generate_secret(
        &self,
        app: &str,
        name: &str,
        force: bool,
        actor: &str,
    ) -> Result<SecretInfo, OpError> {
        check_secret_name(name)?;
        if !force && self.store.secret_ciphertext(app, name)?.is_some() {
            return Err(OpError::new(
                crate::ErrorKind::Conflict,
                format!("secret {name} of {app} already exists"),
            )
            .hint("pass --force to replace it with a new random value"));
        }
        let value = crate::secrets::generate_value();
        self.set_secret(app, name, &value, actor, "secret.generate")
    }
}
