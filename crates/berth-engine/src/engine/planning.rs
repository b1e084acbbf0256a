//! Deciding what a deploy or rollback will do before it starts: the checks that refuse it
//! early (a stopped app, a missing secret, a route another app serves) and its plan.

use super::{BuildInputs, Engine, ImagePlan, ReleasePlan, release_manifest};
use crate::error::OpError;
use berth_manifest::Manifest;
use berth_state::ReleaseKind;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// An app and one of its services, as a clash names them.
type AppService<'a> = (&'a str, &'a str);

/// The proxy's name for the console's own route (not an app name: no app can take it).
pub const CONSOLE_ROUTE: &str = ".console";

/// What a client sent for a deploy, once its uploads are found on disk.
pub struct DeployRequest {
    pub manifest: Manifest,
    pub manifest_toml: String,
    /// Build context archives by service.
    pub contexts: BTreeMap<String, PathBuf>,
    /// Images built elsewhere and loaded from `image_archives`, by service.
    pub prebuilt: BTreeMap<String, String>,
    /// `docker save` archives to load first.
    pub image_archives: Vec<PathBuf>,
    /// The version to record; a timestamp when empty.
    pub version: Option<String>,
    pub actor: String,
    pub wait_drain: bool,
}

/// An image built elsewhere must stand in for a service that builds, and be one of this
/// app's uploaded images: never another app's image or a release's.
fn check_prebuilt(manifest: &Manifest, prebuilt: &BTreeMap<String, String>) -> Result<(), OpError> {
    for (service, reference) in prebuilt {
        let builds = manifest
            .services
            .get(service)
            .or_else(|| manifest.accessories.get(service))
            .is_some_and(|s| matches!(s.source, berth_manifest::ImageSource::Build(_)));
        if !builds {
            return Err(OpError::invalid(format!(
                "an image built elsewhere was sent for {service}, which the manifest does not build"
            ))
            .hint(
                "only services with `build =` take an image built by `berth deploy --build local`",
            ));
        }
        if !berth_core::names::is_uploaded_image(&manifest.app, reference) {
            return Err(OpError::invalid(format!(
                "the image built elsewhere for {service} is named {reference}, outside this app's uploaded images (berth/{}/SERVICE:{}…)",
                manifest.app,
                berth_core::names::UPLOADED_TAG_PREFIX
            )));
        }
    }
    Ok(())
}

impl Engine {
    /// Checks a deploy can start and plans it; refuses it before the app's lock is taken
    /// when it could never succeed.
    pub fn plan_deploy(&self, request: DeployRequest) -> Result<ReleasePlan, OpError> {
        let manifest = request.manifest;
        self.ensure_not_stopped(&manifest.app, "deploy")?;
        self.secret_values(&manifest)?;
        self.check_route_conflicts(&manifest)?;
        check_prebuilt(&manifest, &request.prebuilt)?;
        let version = request
            .version
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string());
        Ok(ReleasePlan {
            manifest,
            image_archives: request.image_archives,
            manifest_toml: request.manifest_toml,
            version,
            images: ImagePlan::Build(BuildInputs {
                contexts: request.contexts,
                prebuilt: request.prebuilt,
            }),
            kind: ReleaseKind::Deploy,
            rollback_of: None,
            actor: request.actor,
            wait_drain: request.wait_drain,
        })
    }

    /// Plans a rollback to `release` (by default the newest one live before the current).
    pub fn plan_rollback(
        &self,
        app: &str,
        release: Option<i64>,
        actor: &str,
        wait_drain: bool,
    ) -> Result<ReleasePlan, OpError> {
        self.ensure_not_stopped(app, "roll back")?;
        let (_live, target) = self.rollback_target(app, release)?;
        let manifest = release_manifest(&target)?;
        Ok(ReleasePlan {
            manifest,
            image_archives: Vec::new(),
            manifest_toml: target.manifest_toml.clone(),
            version: target.version.clone(),
            images: ImagePlan::Existing(target.images.clone()),
            kind: ReleaseKind::Rollback,
            rollback_of: Some(target.number),
            actor: actor.to_owned(),
            wait_drain,
        })
    }

    /// Decrypts every secret the manifest needs; names all missing ones at once.
    pub(crate) fn secret_values(
        &self,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, String>, OpError> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for name in manifest.secret_names() {
            match self.store.secret_ciphertext(&manifest.app, name)? {
                Some(ciphertext) => {
                    values.insert(name.to_owned(), self.secrets.open_value(name, &ciphertext)?);
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            let commands: Vec<String> = missing
                .iter()
                .map(|n| format!("berth secrets set {n} --app {}", manifest.app))
                .collect();
            return Err(OpError::invalid(format!(
                "{} {} not set for app {}",
                if missing.len() == 1 {
                    "secret"
                } else {
                    "secrets"
                },
                missing.join(", "),
                manifest.app
            ))
            .hint(format!(
                "set {} first: {}",
                if missing.len() == 1 { "it" } else { "them" },
                commands.join("; ")
            )));
        }
        Ok(values)
    }

    /// Refuses a manifest whose routes another app on this agent already serves, that reach
    /// into the console's domain, or that mix routes with and without `auth` on one domain
    /// (the login cookie is the host's: a route without `auth` beside one with it would be
    /// sent it, and could set it).
    pub(crate) fn check_route_conflicts(&self, manifest: &Manifest) -> Result<(), OpError> {
        let mut claimed = Vec::new();
        for service in manifest.web_services() {
            if let Some(route) = &service.route {
                let hosts = if route.domains.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    route.domains.clone()
                };
                for host in hosts {
                    claimed.push((
                        host,
                        route.path.clone(),
                        service.name.clone(),
                        route.auth.is_some(),
                    ));
                }
            }
        }
        if let Some(page) = &manifest.status_page {
            let hosts = if page.domains.is_empty() {
                vec!["*".to_owned()]
            } else {
                page.domains.clone()
            };
            for host in hosts {
                claimed.push((host, page.path.clone(), "the status page".to_owned(), false));
            }
        }
        let others: Vec<_> = self
            .routing
            .routes()
            .into_iter()
            .filter(|other| other.app != manifest.app)
            .collect();
        let everyone = claimed
            .iter()
            .map(|(host, _, service, auth)| {
                (
                    host.as_str(),
                    manifest.app.as_str(),
                    service.as_str(),
                    *auth,
                )
            })
            .chain(others.iter().flat_map(|other| {
                other.domains.iter().map(move |d| {
                    (
                        d.as_str(),
                        other.app.as_str(),
                        other.service.as_str(),
                        other.auth,
                    )
                })
            }));
        // Per host: the first route with auth and the first without, as (app, service).
        let mut by_host: BTreeMap<&str, (Option<AppService<'_>>, Option<AppService<'_>>)> =
            BTreeMap::new();
        for (host, app, service, auth) in everyone {
            let entry = by_host.entry(host).or_default();
            let slot = if auth { &mut entry.0 } else { &mut entry.1 };
            slot.get_or_insert((app, service));
        }
        for (host, sides) in &by_host {
            if let (Some((auth_app, auth_service)), Some((open_app, open_service))) = sides {
                return Err(OpError::invalid(format!(
                    "{host} mixes a route with auth (service {auth_service} of {auth_app}) and one without (service {open_service} of {open_app})"
                ))
                .hint("give every route on a domain with auth = \"berth\" auth too, or move the open one to a domain of its own"));
            }
        }
        for other in &others {
            let other_hosts = if other.domains.is_empty() {
                vec!["*".to_owned()]
            } else {
                other.domains.clone()
            };
            for (host, path, service, _) in &claimed {
                if other.app == CONSOLE_ROUTE && other_hosts.contains(host) {
                    return Err(OpError::invalid(format!(
                        "{host} is the console's domain (berth agent --dashboard-domain): no app may route any path of it (service {service})"
                    ))
                    .hint("give this route another domain"));
                }
                if other_hosts.contains(host) && &other.path == path {
                    let shown = if host == "*" {
                        format!("every host at {path}")
                    } else {
                        format!("{host}{path}")
                    };
                    return Err(OpError::invalid(format!(
                        "route clash: {shown} (service {service}) is already served by app {} (service {})",
                        other.app, other.service
                    ))
                    .hint("give this app's route its own domains or path prefix"));
                }
            }
        }
        Ok(())
    }
}
