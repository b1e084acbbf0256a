//! `berth tokens add|list|revoke`: the agent's scoped API tokens (`berth-auth`).

use super::{Ctx, invalid};
use crate::TokensCommand;
use crate::output;
use berth_api::{TokenInfo, TokenIssued, TokenRequest};
use console::style;
use std::process::ExitCode;

pub(crate) async fn tokens(ctx: &Ctx, action: TokensCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        TokensCommand::Add {
            name,
            scope,
            app,
            expires,
        } => {
            let expires_in_seconds = match expires.as_deref() {
                None | Some("never") => None,
                Some(text) => Some(
                    berth_manifest::units::parse_duration(text)
                        .map_err(|e| {
                            invalid(
                                format!("--expires: {e}"),
                                Some("a duration such as 90d or 12h, or `never`"),
                            )
                        })?
                        .as_secs(),
                ),
            };
            let issued: TokenIssued = client
                .request(
                    http::Method::POST,
                    "/v1/tokens",
                    &TokenRequest {
                        name,
                        scope,
                        app,
                        expires_in_seconds,
                    },
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                use std::io::IsTerminal;
                // Piped, only the token: `berth tokens add ci --scope deploy | gh secret set BERTH_TOKEN`.
                println!("{}", issued.token);
                if std::io::stdout().is_terminal() {
                    eprintln!(
                        "{} token {} ({}{}{}): shown this once; keep it as a secret (BERTH_TOKEN)",
                        style("✓").green(),
                        issued.info.name,
                        issued.info.scope,
                        issued
                            .info
                            .app
                            .as_deref()
                            .map(|a| format!(", app {a}"))
                            .unwrap_or_default(),
                        issued
                            .info
                            .expires_at
                            .map(|at| format!(", expires {}", output::time(at)))
                            .unwrap_or_default(),
                    );
                }
            }
        }
        TokensCommand::List => {
            let list: Vec<TokenInfo> = client.get("/v1/tokens").await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!(
                    "no API tokens but the agent's own (DATA_DIR/api-token); `berth tokens add NAME --scope deploy` makes one"
                );
            } else {
                let now = now_ms();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        let state = match (t.revoked_at, t.expires_at) {
                            (Some(at), _) => format!("revoked {}", output::time(at)),
                            (None, Some(at)) if at <= now => {
                                format!("expired {}", output::time(at))
                            }
                            (None, Some(at)) => format!("until {}", output::time(at)),
                            (None, None) => "live".into(),
                        };
                        vec![
                            t.name.clone(),
                            t.scope.clone(),
                            t.app.clone().unwrap_or_else(|| "any".into()),
                            state,
                            t.last_used_at
                                .map(output::time)
                                .unwrap_or_else(|| "never".into()),
                            t.created_by.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(
                        &["NAME", "SCOPE", "APP", "STATE", "LAST USED", "MADE BY"],
                        &rows
                    )
                );
            }
        }
        TokensCommand::Revoke { name } => {
            client.delete(&format!("/v1/tokens/{name}")).await?;
            if ctx.json {
                println!("{}", serde_json::json!({ "revoked": name }));
            } else {
                println!(
                    "{} token {name} revoked: requests with it are refused from now on",
                    style("✓").green()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
