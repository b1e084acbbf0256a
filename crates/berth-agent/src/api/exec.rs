//! Logs, one-off commands and attached (`-it`) commands.

use super::*;

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
    /// Unix seconds.
    since: Option<i64>,
    /// Unix seconds; lines berth kept only.
    until: Option<i64>,
    /// Only this release's containers (kept lines).
    release: Option<i64>,
    /// Lines containing this text (kept lines).
    grep: Option<String>,
    /// JSON lines at this level or above (kept lines).
    level: Option<String>,
    /// Read the lines berth kept even without the filters above.
    #[serde(default)]
    stored: bool,
}

impl LogsQuery {
    fn wants_kept_lines(&self) -> bool {
        self.stored
            || self.until.is_some()
            || self.release.is_some()
            || self.grep.is_some()
            || self.level.is_some()
    }
}

/// The lines berth kept of a service (its replaced and removed containers' too).
async fn kept_logs(
    state: &ApiState,
    app: &str,
    service: &str,
    query: &LogsQuery,
) -> ApiResult<Response> {
    if let Some(level) = &query.level
        && berth_logs::level_rank(&level.to_ascii_lowercase()).is_none()
    {
        return Err(OpError::invalid(format!("`{level}` is not a log level"))
            .hint("use trace, debug, info, warn, error or fatal")
            .into());
    }
    let filter = berth_logs::LogFilter {
        service: Some(service.to_owned()),
        release: query.release,
        since: query.since.map(|s| s.saturating_mul(1000)),
        until: query.until.map(|u| u.saturating_mul(1000)),
        grep: query.grep.clone(),
        level: query.level.as_ref().map(|l| l.to_ascii_lowercase()),
        tail: query.tail,
    };
    let (store, app_name) = (state.logs.clone(), app.to_owned());
    let records = tokio::task::spawn_blocking(move || store.read(&app_name, &filter))
        .await
        .map_err(|e| OpError::failed(format!("reading the kept logs stopped: {e}")))?
        .map_err(|e| OpError::failed(e.to_string()))?;
    let (sender, receiver) = mpsc::unbounded_channel::<LogLine>();
    for record in records {
        let _ = sender.send(LogLine {
            container: record.container,
            stream: record.stream,
            line: record.line,
            at: Some(record.at),
            release: record.release,
        });
    }
    drop(sender);
    Ok(ndjson(receiver))
}

pub(super) async fn logs(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    if query.wants_kept_lines() {
        if query.follow {
            return Err(OpError::invalid(
                "--follow shows the running containers' output; --release, --until, --grep and --level read the lines berth kept",
            )
            .hint("drop --follow, or the filters")
            .into());
        }
        state.engine.require_app(&app)?;
        return kept_logs(&state, &app, &service, &query).await;
    }
    let role = state.engine.service_role(&app, &service)?;
    let containers = state
        .engine
        .service_containers(&app, &service, role == berth_manifest::Role::Accessory)
        .await?;
    if containers.is_empty() {
        if !query.follow {
            // Nothing runs (stopped, crashed): what berth kept is what there is.
            return kept_logs(&state, &app, &service, &query).await;
        }
        return Err(OpError::not_found(format!(
            "service {service} of {app} has no running containers"
        ))
        .into());
    }
    let (sender, receiver) = mpsc::unbounded_channel::<LogLine>();
    let log_query = LogQuery {
        tail: query.tail,
        follow: query.follow,
        since: query.since,
        timestamps: false,
    };
    let mut followed: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (id, name) in containers {
        followed.insert(id.clone());
        tokio::spawn(pass_logs(
            state.engine.clone(),
            id,
            name,
            log_query.clone(),
            sender.clone(),
        ));
    }
    if query.follow {
        // Following a service, not a container: a restart or a deploy replaces its
        // containers, and the new ones are followed from their first line.
        let engine = state.engine.clone();
        let accessory = role == berth_manifest::Role::Accessory;
        tokio::spawn(async move {
            let from_start = LogQuery {
                tail: None,
                follow: true,
                since: None,
                timestamps: false,
            };
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if sender.is_closed() {
                    return;
                }
                let Ok(now) = engine.service_containers(&app, &service, accessory).await else {
                    continue;
                };
                for (id, name) in now {
                    if followed.insert(id.clone()) {
                        let _ = sender.send(LogLine {
                            container: name.clone(),
                            stream: "stderr".into(),
                            line: format!("berth: following the new container {name}"),
                            at: None,
                            release: None,
                        });
                        tokio::spawn(pass_logs(
                            engine.clone(),
                            id,
                            name,
                            from_start.clone(),
                            sender.clone(),
                        ));
                    }
                }
            }
        });
    } else {
        drop(sender);
    }
    Ok(ndjson(receiver))
}

/// Passes one container's log to `sender`, line by line, until it ends or the client goes.
pub(super) async fn pass_logs(
    engine: Arc<Engine>,
    id: String,
    name: String,
    query: LogQuery,
    sender: mpsc::UnboundedSender<LogLine>,
) {
    let mut stream = engine.runtime().logs(&id, &query);
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = sender.send(LogLine {
                    container: name.clone(),
                    stream: "stderr".into(),
                    line: format!("berth: {error}"),
                    at: None,
                    release: None,
                });
                return;
            }
        };
        let stream_name = match chunk.stream {
            berth_runtime::LogStream::Stdout => "stdout",
            berth_runtime::LogStream::Stderr => "stderr",
        };
        let buffer = pending.entry(stream_name.to_owned()).or_default();
        buffer.push_str(&String::from_utf8_lossy(&chunk.data));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = LogLine {
                container: name.clone(),
                stream: stream_name.into(),
                line: line.trim_end_matches(['\n', '\r']).to_owned(),
                at: None,
                release: None,
            };
            if sender.send(line).is_err() {
                return; // the client went away
            }
        }
    }
    for (stream_name, rest) in pending {
        if !rest.is_empty() {
            let _ = sender.send(LogLine {
                container: name.clone(),
                stream: stream_name,
                line: rest,
                at: None,
                release: None,
            });
        }
    }
}

/// Checks a command, finds the container it runs in and records it in the audit log:
/// (container id, name).
async fn exec_target(
    state: &ApiState,
    headers: &HeaderMap,
    app: &str,
    service: &str,
    command: &[String],
    terminal: bool,
) -> ApiResult<(String, String)> {
    if command.is_empty() {
        return Err(OpError::invalid("no command given")
            .hint(if terminal {
                "berth exec -it web -- sh"
            } else {
                "berth exec web -- COMMAND ARGS"
            })
            .into());
    }
    let found = exec_container(state, app, service).await?;
    state.engine.audit(
        &actor(state, headers),
        "exec",
        &format!("{app}/{service}"),
        "started",
        &format!(
            "{}{}",
            if terminal { "(terminal) " } else { "" },
            command.join(" ")
        ),
    );
    Ok(found)
}

/// The running container a command of `service` runs in: (id, name).
pub(super) async fn exec_container(
    state: &ApiState,
    app: &str,
    service: &str,
) -> ApiResult<(String, String)> {
    let role = state.engine.service_role(app, service)?;
    let containers = state
        .engine
        .service_containers(app, service, role == berth_manifest::Role::Accessory)
        .await?;
    containers.into_iter().next().ok_or_else(|| {
        OpError::not_found(format!(
            "service {service} of {app} has no running container"
        ))
        .into()
    })
}

pub(super) async fn exec(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    headers: HeaderMap,
    Json(request): Json<ExecRequest>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    let (id, name) = exec_target(&state, &headers, &app, &service, &request.command, false).await?;
    let session = state
        .engine
        .runtime()
        .exec(&id, &request.command)
        .await
        .map_err(OpError::from)?;
    let (sender, receiver) = mpsc::unbounded_channel::<ExecEvent>();
    let engine = state.engine.clone();
    tokio::spawn(async move {
        let mut output = session.output;
        while let Some(chunk) = output.next().await {
            let event = match chunk {
                Ok(chunk) => ExecEvent::Output {
                    stream: match chunk.stream {
                        berth_runtime::LogStream::Stdout => "stdout".into(),
                        berth_runtime::LogStream::Stderr => "stderr".into(),
                    },
                    data: String::from_utf8_lossy(&chunk.data).into_owned(),
                },
                Err(error) => ExecEvent::Error {
                    message: error.to_string(),
                },
            };
            if sender.send(event).is_err() {
                return;
            }
        }
        let _ = sender.send(match exit_code(&engine, &session.id).await {
            Ok(code) => ExecEvent::Exit {
                code,
                container: name,
            },
            Err(message) => ExecEvent::Error { message },
        });
    });
    Ok(ndjson(receiver))
}

#[derive(Deserialize)]
pub(super) struct AttachQuery {
    /// The [`AttachSpec`] as hex-encoded JSON (a command's words may hold anything).
    spec: String,
}

/// `berth exec -it`: the command runs with standard input (and a terminal when asked), and
/// the connection, upgraded, carries [`ExecFrame`]s both ways until it exits.
pub(super) async fn attach(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    Query(query): Query<AttachQuery>,
    headers: HeaderMap,
    mut request: axum::extract::Request,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    let spec: AttachSpec = hex::decode(&query.spec)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| OpError::invalid("the attach request's spec is not valid"))?;
    let upgrade_asked = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_PROTOCOL));
    if !upgrade_asked {
        return Err(OpError::invalid(format!(
            "an attached command needs `Upgrade: {EXEC_PROTOCOL}`"
        ))
        .hint("use `berth exec -it`")
        .into());
    }
    let (id, _name) =
        exec_target(&state, &headers, &app, &service, &spec.command, spec.tty).await?;
    let session = state
        .engine
        .runtime()
        .exec_with(
            &id,
            &spec.command,
            &berth_runtime::ExecOptions {
                stdin: true,
                tty: spec.tty,
                ..Default::default()
            },
        )
        .await
        .map_err(OpError::from)?;
    if let (true, Some((rows, cols))) = (spec.tty, spec.size) {
        // Best effort: a command that already exited has nothing to resize.
        let _ = state
            .engine
            .runtime()
            .resize_exec(&session.id, rows, cols)
            .await;
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let engine = state.engine.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => pump_attached(engine, session, upgraded, spec.tty).await,
            Err(error) => {
                tracing::warn!(%error, "an attached command's connection was not upgraded")
            }
        }
    });
    Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, EXEC_PROTOCOL)
        .body(axum::body::Body::empty())
        .map_err(|e| OpError::failed(e.to_string()).into())
}

/// Moves an attached command's input, output and terminal size over the upgraded
/// connection; the exit code is the last frame.
pub(super) async fn pump_attached(
    engine: Arc<crate::engine::Engine>,
    session: berth_runtime::ExecSession,
    upgraded: hyper::upgrade::Upgraded,
    tty: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = hyper_util::rt::TokioIo::new(upgraded);
    let (mut reader, mut writer) = tokio::io::split(io);
    let exec_id = session.id.clone();
    let mut input = session.input;
    let resizer = engine.clone();
    let resize_id = exec_id.clone();
    // The client's frames: input, its end, and resizes. A client that goes away ends the
    // command's input, as closing a terminal would.
    let from_client = tokio::spawn(async move {
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            loop {
                match ExecFrame::decode(&mut buffer) {
                    Ok(Some(ExecFrame::Stdin(data))) => {
                        if let Some(stdin) = input.as_mut()
                            && stdin.write_all(&data).await.is_err()
                        {
                            input = None;
                        }
                    }
                    Ok(Some(ExecFrame::StdinClosed)) => {
                        if let Some(mut stdin) = input.take() {
                            let _ = stdin.shutdown().await;
                        }
                    }
                    Ok(Some(ExecFrame::Resize { rows, cols })) => {
                        let _ = resizer.runtime().resize_exec(&resize_id, rows, cols).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "an attached client sent a bad frame");
                        return;
                    }
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if let Some(mut stdin) = input.take() {
                        let _ = stdin.shutdown().await;
                    }
                    // A terminal that goes away hangs up its command, as closing a terminal
                    // window does: a shell or console left behind would run for good.
                    if tty
                        && let Ok(Some(pid)) = resizer.runtime().exec_pid(&resize_id).await
                        && let Some(pid) = i32::try_from(pid)
                            .ok()
                            .and_then(rustix::process::Pid::from_raw)
                    {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
                    }
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let mut output = session.output;
    let mut failure = None;
    while let Some(chunk) = output.next().await {
        let frame = match chunk {
            Ok(chunk) => match chunk.stream {
                berth_runtime::LogStream::Stdout => ExecFrame::Stdout(chunk.data.to_vec()),
                berth_runtime::LogStream::Stderr => ExecFrame::Stderr(chunk.data.to_vec()),
            },
            Err(error) => {
                failure = Some(error.to_string());
                break;
            }
        };
        if writer.write_all(&frame.encode()).await.is_err() {
            from_client.abort();
            return;
        }
    }
    from_client.abort();
    let last = match failure {
        Some(message) => ExecFrame::Error(message),
        None => match exit_code(&engine, &exec_id).await {
            Ok(code) => ExecFrame::Exit(code),
            Err(message) => ExecFrame::Error(message),
        },
    };
    let _ = writer.write_all(&last.encode()).await;
    let _ = writer.shutdown().await;
}

/// The exit code of a command whose output has ended (Docker may need a moment to record
/// it).
pub(super) async fn exit_code(
    engine: &crate::engine::Engine,
    exec_id: &str,
) -> Result<i64, String> {
    for _ in 0..100 {
        match engine.runtime().exec_exit_code(exec_id).await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(-1)
}
