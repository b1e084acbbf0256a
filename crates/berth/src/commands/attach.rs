//! `berth exec -i` / `-it`: a command in a container wired to this terminal over an upgraded
//! API connection (unix socket, TCP or ssh alike), with the terminal in raw mode and its size
//! followed, and the command's exit code passed through.

use super::{Ctx, invalid};
use anyhow::anyhow;
use berth_api::{AttachSpec, EXEC_PROTOCOL, ExecFrame};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub(super) async fn exec_attached(
    ctx: &Ctx,
    app: &str,
    service: &str,
    command: Vec<String>,
    tty: bool,
) -> anyhow::Result<ExitCode> {
    if tty && !std::io::stdin().is_terminal() {
        return Err(invalid(
            "-t needs a terminal on standard input, and this one is not",
            Some("drop -t to pipe input into the command (`... | berth exec -i web -- cat`)"),
        ));
    }
    let spec = AttachSpec {
        command,
        tty,
        size: if tty { terminal_size() } else { None },
    };
    let spec = hex::encode(serde_json::to_vec(&spec)?);
    let client = ctx.client()?;
    let upgraded = client
        .upgrade(
            &format!("/v1/apps/{app}/services/{service}/attach?spec={spec}"),
            EXEC_PROTOCOL,
        )
        .await?;
    let (mut reader, mut writer) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));

    // Frames for the agent: standard input, read on a plain thread (a blocked read must not
    // keep the process alive once the command has exited), and the terminal's new sizes.
    let (frames, mut to_send) = mpsc::channel::<ExecFrame>(16);
    let input = frames.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    let _ = input.blocking_send(ExecFrame::StdinClosed);
                    return;
                }
                Ok(n) => {
                    if input
                        .blocking_send(ExecFrame::Stdin(buffer[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    if tty
        && let Ok(mut resized) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    {
        let sizes = frames.clone();
        tokio::spawn(async move {
            while resized.recv().await.is_some() {
                if let Some((rows, cols)) = terminal_size()
                    && sizes.send(ExecFrame::Resize { rows, cols }).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(frames);
    let sending = tokio::spawn(async move {
        while let Some(frame) = to_send.recv().await {
            if writer.write_all(&frame.encode()).await.is_err() {
                return;
            }
        }
    });

    // Raw mode only now: errors above print on a normal terminal. Restored when dropped,
    // whatever happens below.
    let raw = if tty { RawMode::enable().ok() } else { None };
    // A terminal closed or a kill ends berth here, never leaving the terminal raw.
    let hangup = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut hup), Ok(mut term)) => {
                tokio::select! {
                    _ = hup.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = receive(&mut reader) => result,
        () = hangup => Err(anyhow!("berth was told to stop (the command in the container was hung up)")),
    };
    drop(raw);
    sending.abort();
    match result? {
        Received::Exit(code) => Ok(ExitCode::from(exit_byte(code))),
        Received::Error(message) => Err(anyhow!(message)),
        Received::Closed => Err(anyhow!(
            "the connection to the agent ended before the command's exit status came"
        )),
    }
}

enum Received {
    Exit(i64),
    Error(String),
    Closed,
}

/// Writes the command's output as it comes, until its exit code.
async fn receive<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<Received> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        while let Some(frame) = ExecFrame::decode(&mut buffer).map_err(|e| anyhow!(e))? {
            match frame {
                ExecFrame::Stdout(data) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                ExecFrame::Stderr(data) => {
                    stderr.write_all(&data)?;
                    stderr.flush()?;
                }
                ExecFrame::Exit(code) => return Ok(Received::Exit(code)),
                ExecFrame::Error(message) => return Ok(Received::Error(message)),
                _ => {}
            }
        }
        match reader.read(&mut chunk).await? {
            0 => return Ok(Received::Closed),
            n => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An exit code as a process can return it (`exit 300` in a shell is 44, as in Docker).
fn exit_byte(code: i64) -> u8 {
    u8::try_from(code.rem_euclid(256)).unwrap_or(1)
}

/// Rows and columns of the terminal on standard output (or input).
fn terminal_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// The terminal in raw mode (keys go to the remote command as typed, Ctrl-C included) until
/// dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enable() -> std::io::Result<Self> {
        let saved = rustix::termios::tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &raw,
        )?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_wrap_like_a_shell() {
        assert_eq!(exit_byte(0), 0);
        assert_eq!(exit_byte(3), 3);
        assert_eq!(exit_byte(300), 44);
        assert_eq!(exit_byte(-1), 255);
    }
}
