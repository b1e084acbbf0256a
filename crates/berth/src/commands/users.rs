//! `berth users`: the console's accounts (berth-auth), through the agent's API like the
//! console's own users page.

use super::Ctx;
use crate::UsersCommand;
use crate::output;
use berth_api::{
    SessionsEnded, SignUpPolicy, TwoFactorPolicy, UserInfo, UserLink, UserRequest, UserRoleRequest,
};
use console::style;
use std::process::ExitCode;

fn link_line(ctx: &Ctx, link: &UserLink, what: &str) {
    let url = link.url.clone().unwrap_or_else(|| {
        format!(
            "{} (the agent serves no console: start it with --dashboard ADDR)",
            link.path
        )
    });
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(link).unwrap_or_default());
        return;
    }
    use std::io::IsTerminal;
    // Piped, only the link.
    println!("{url}");
    if std::io::stdout().is_terminal() {
        eprintln!(
            "{} {what} for {}: give them this link; it works once, until {}",
            style("✓").green(),
            link.user,
            output::time(link.expires_at)
        );
    }
}

pub(crate) async fn users(ctx: &Ctx, action: UsersCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        UsersCommand::Add { name, role } => {
            let link: UserLink = client
                .request(http::Method::POST, "/v1/users", &UserRequest { name, role })
                .await?;
            link_line(ctx, &link, "setup link");
        }
        UsersCommand::List => {
            let list: Vec<UserInfo> = client.get("/v1/users").await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no console users; `berth users add NAME --role admin` makes one");
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|u| {
                        let state = if u.status != "active" {
                            u.status.clone()
                        } else if u.locked_until.is_some_and(|at| at > now) {
                            "locked".to_owned()
                        } else if !u.has_password {
                            "waiting for setup".to_owned()
                        } else {
                            "active".to_owned()
                        };
                        vec![
                            u.name.clone(),
                            u.role.clone(),
                            state,
                            if u.two_factor { "on" } else { "off" }.to_owned(),
                            u.last_login_at
                                .map(output::time)
                                .unwrap_or_else(|| "never".into()),
                            u.created_by.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(
                        &["NAME", "ROLE", "STATE", "2FA", "LAST LOGIN", "MADE BY"],
                        &rows
                    )
                );
            }
        }
        UsersCommand::Reset { name } => {
            let link: UserLink = client
                .request(
                    http::Method::POST,
                    &format!("/v1/users/{name}/reset"),
                    &serde_json::json!({}),
                )
                .await?;
            link_line(ctx, &link, "password reset link");
        }
        UsersCommand::Disable { name } => {
            let user: UserInfo = client
                .request(
                    http::Method::POST,
                    &format!("/v1/users/{name}/disable"),
                    &serde_json::json!({}),
                )
                .await?;
            done(
                ctx,
                &user,
                "disabled: its sessions ended and it cannot log in",
            )?;
        }
        UsersCommand::Enable { name } => {
            let user: UserInfo = client
                .request(
                    http::Method::POST,
                    &format!("/v1/users/{name}/enable"),
                    &serde_json::json!({}),
                )
                .await?;
            done(ctx, &user, "enabled")?;
        }
        UsersCommand::Role { name, role } => {
            let user: UserInfo = client
                .request(
                    http::Method::POST,
                    &format!("/v1/users/{name}/role"),
                    &UserRoleRequest { role },
                )
                .await?;
            done(
                ctx,
                &user,
                &format!("now has the {} role; they log in again", user.role),
            )?;
        }
        UsersCommand::Approve { name } => {
            let user: UserInfo = client
                .request(
                    http::Method::POST,
                    &format!("/v1/users/{name}/approve"),
                    &serde_json::json!({}),
                )
                .await?;
            done(ctx, &user, "approved: they can log in now")?;
        }
        UsersCommand::Deny { name } => {
            let _: UserInfo = client
                .request(
                    http::Method::POST,
                    &format!("/v1/users/{name}/deny"),
                    &serde_json::json!({}),
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::json!({ "denied": name }));
            } else {
                println!(
                    "{} {name}'s request was denied and removed",
                    style("✓").green()
                );
            }
        }
        UsersCommand::SignUp { policy } => {
            let policy: SignUpPolicy = match policy.as_deref() {
                Some(choice) => {
                    client
                        .request(
                            http::Method::POST,
                            "/v1/console/sign-up",
                            &SignUpPolicy {
                                open: choice == "open",
                            },
                        )
                        .await?
                }
                None => client.get("/v1/console/sign-up").await?,
            };
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&policy)?);
            } else if policy.open {
                println!("sign-up is open: requests wait for `berth users approve NAME`");
            } else {
                println!("sign-up is closed: accounts come from `berth users add`");
            }
        }
        UsersCommand::TwoFactor { policy } => {
            let policy: TwoFactorPolicy = match policy.as_deref() {
                Some(choice) => {
                    client
                        .request(
                            http::Method::POST,
                            "/v1/console/two-factor",
                            &TwoFactorPolicy {
                                required: choice == "required",
                            },
                        )
                        .await?
                }
                None => client.get("/v1/console/two-factor").await?,
            };
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&policy)?);
            } else if policy.required {
                println!("two-factor logins are required of every console user");
            } else {
                println!("two-factor logins are each console user's choice (their account page)");
            }
        }
        UsersCommand::Logout { name } => {
            let ended: SessionsEnded = client
                .request(
                    http::Method::DELETE,
                    &format!("/v1/users/{name}/sessions"),
                    &serde_json::json!({}),
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&ended)?);
            } else {
                println!(
                    "{} {} session(s) of {name} ended",
                    style("✓").green(),
                    ended.ended
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn done(ctx: &Ctx, user: &UserInfo, what: &str) -> anyhow::Result<()> {
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(user)?);
    } else {
        println!("{} {} {what}", style("✓").green(), user.name);
    }
    Ok(())
}
