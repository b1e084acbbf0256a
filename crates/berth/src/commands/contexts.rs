//! `berth context add|use|list|rm`: named remote agents (`berth_ops::contexts` keeps the file).

use super::{Ctx, invalid};
use anyhow::anyhow;
use console::style;
use std::process::ExitCode;

/// `berth context add|use|list|rm`.
pub(crate) async fn context(ctx: &Ctx, action: crate::ContextCommand) -> anyhow::Result<ExitCode> {
    use crate::ContextCommand;
    use berth_ops::contexts::{Context, Contexts, config_dir, valid_name};
    let dir = config_dir();
    let mut contexts = Contexts::load(&dir).map_err(|e| super::contexts_error(&e))?;
    match action {
        ContextCommand::Add {
            name,
            address,
            token_stdin,
            fingerprint,
            use_it,
            force,
        } => {
            if !valid_name(&name) || name == "default" {
                return Err(invalid(
                    format!("`{name}` is not a context name"),
                    Some(
                        "use lower-case letters, digits and dashes, starting with a letter (`default` means the local agent)",
                    ),
                ));
            }
            if contexts.contexts.contains_key(&name) && !force {
                return Err(invalid(
                    format!("context `{name}` exists"),
                    Some("pass --force to replace it, or `berth context rm` it first"),
                ));
            }
            let target = crate::client::Target::parse(&address).map_err(|e| invalid(e, None))?;
            let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
            let token = if token_stdin {
                Some(super::read_secret_value("the API token")?)
            } else {
                env("BERTH_TOKEN")
            };
            let fingerprint = fingerprint.or_else(|| env("BERTH_AGENT_FINGERPRINT"));
            if let Some(pin) = &fingerprint {
                let hex = pin.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        format!("`{pin}` is not a certificate fingerprint"),
                        Some(
                            "it looks like sha256: and 64 hex digits, as the agent prints it at start (api_fingerprint in DATA_DIR/agent.json)",
                        ),
                    ));
                }
            }
            let needs_pin = matches!(target, crate::client::Target::Tls(_));
            if needs_pin && (token.is_none() || fingerprint.is_none()) {
                return Err(invalid(
                    format!(
                        "{address} needs the agent's API token and its certificate fingerprint"
                    ),
                    Some(
                        "on the server: `cat DATA_DIR/api-token` and `grep api_fingerprint DATA_DIR/agent.json`; then `berth context add NAME https://HOST:PORT --fingerprint sha256:... --token-stdin < token-file`",
                    ),
                ));
            }
            let keeps_secrets = needs_pin || matches!(target, crate::client::Target::Tcp(_));
            let context = Context {
                agent: address.clone(),
                token: token.filter(|_| keeps_secrets),
                fingerprint: fingerprint.filter(|_| needs_pin),
            };
            // Does it answer? A context is saved either way: the server may be down now.
            let client = crate::client::Client::new(
                target,
                context.token.clone(),
                context.fingerprint.clone(),
            );
            let reached = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                client.get::<berth_api::AgentInfo>("/v1/info"),
            )
            .await;
            contexts.contexts.insert(name.clone(), context);
            if use_it {
                contexts.current = Some(name.clone());
            }
            contexts.save(&dir).map_err(|e| anyhow!(e))?;
            let reached = match reached {
                Ok(Ok(info)) => Ok(info.version),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("no answer within 20 s".to_owned()),
            };
            if ctx.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "name": name, "agent": address, "current": use_it,
                        "reached": reached.is_ok(),
                        "agent_version": reached.as_ref().ok(),
                        "error": reached.as_ref().err(),
                    }))?
                );
            } else {
                match &reached {
                    Ok(version) => println!(
                        "{} context {name}: {address} answers (berth {version}){}",
                        style("✓").green(),
                        if use_it { "; in use now" } else { "" }
                    ),
                    Err(error) => eprintln!(
                        "{} context {name} saved, but {address} did not answer: {error}",
                        style("!").yellow()
                    ),
                }
                if !use_it {
                    println!("  use it with `berth context use {name}` or `--context {name}`");
                }
            }
        }
        ContextCommand::Use { name } => {
            if name == "default" {
                contexts.current = None;
            } else {
                contexts
                    .get(&name)
                    .map_err(|e| invalid(e.to_string(), Some("`berth context list` shows them")))?;
                contexts.current = Some(name.clone());
            }
            contexts.save(&dir).map_err(|e| anyhow!(e))?;
            if ctx.json {
                println!("{}", serde_json::json!({ "current": contexts.current }));
            } else if name == "default" {
                println!(
                    "{} commands talk to the local agent again",
                    style("✓").green()
                );
            } else {
                println!(
                    "{} commands talk to {name} ({}) now",
                    style("✓").green(),
                    contexts
                        .contexts
                        .get(&name)
                        .map(|c| c.agent.as_str())
                        .unwrap_or_default()
                );
            }
        }
        ContextCommand::List => {
            if ctx.json {
                let list: Vec<_> = contexts
                    .contexts
                    .iter()
                    .map(|(name, c)| {
                        serde_json::json!({
                            "name": name,
                            "agent": c.agent,
                            "current": contexts.current.as_deref() == Some(name.as_str()),
                            "has_token": c.token.is_some(),
                            "fingerprint": c.fingerprint,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if contexts.contexts.is_empty() {
                println!(
                    "no contexts: commands talk to the local agent (`berth context add NAME ssh://USER@HOST` adds one)"
                );
            } else {
                let mark = |name: &str| {
                    if contexts.current.as_deref() == Some(name) {
                        "*"
                    } else {
                        " "
                    }
                };
                println!(
                    "{} default  the local agent",
                    if contexts.current.is_none() { "*" } else { " " }
                );
                for (name, c) in &contexts.contexts {
                    println!(
                        "{} {name}  {}{}",
                        mark(name),
                        c.agent,
                        if c.token.is_some() {
                            "  (token kept)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        ContextCommand::Rm { name } => {
            contexts
                .get(&name)
                .map_err(|e| invalid(e.to_string(), None))?;
            contexts.contexts.remove(&name);
            if contexts.current.as_deref() == Some(name.as_str()) {
                contexts.current = None;
            }
            contexts.save(&dir).map_err(|e| anyhow!(e))?;
            if ctx.json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                println!("{} context {name} removed", style("✓").green());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
