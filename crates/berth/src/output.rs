//! How the CLI shows things: spinners and colour in a terminal, plain lines without one,
//! one JSON document with `--json`. Progress goes to stderr; results go to stdout.

use berth_api::{BackupList, BackupsOutcome, OperationEvent, Outcome};
use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Terminal,
    Plain,
    Json,
}

impl Mode {
    pub fn detect(json: bool) -> Self {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            Mode::Terminal
        } else {
            Mode::Plain
        }
    }
}

/// `text` cut to `max` characters, with an ellipsis when something was cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Renders the event stream of a deploy, rollback or restart.
pub struct OperationView {
    mode: Mode,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    /// Log lines already shown: the same warning for several backups is said once.
    logged: std::collections::HashSet<String>,
}

impl OperationView {
    pub fn new(mode: Mode) -> Self {
        let multi = if mode == Mode::Terminal {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        Self {
            mode,
            multi,
            bars: HashMap::new(),
            logged: std::collections::HashSet::new(),
        }
    }

    pub fn show(&mut self, event: &OperationEvent) {
        if let OperationEvent::Log { message } = event
            && !self.logged.insert(message.clone())
        {
            return;
        }
        match (self.mode, event) {
            (Mode::Json, _) | (_, OperationEvent::Finished(_)) => {}
            (Mode::Terminal, OperationEvent::Started { step }) => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner:.cyan} {msg} {elapsed:.dim}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(step.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                self.bars.insert(step.clone(), bar);
            }
            (
                Mode::Terminal,
                OperationEvent::Done {
                    step,
                    elapsed_ms,
                    detail,
                },
            ) => {
                let line = format!(
                    "  {} {step}{} {}",
                    style("✓").green(),
                    detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default(),
                    style(seconds(*elapsed_ms)).dim()
                );
                self.finish_bar(step, line);
            }
            (
                Mode::Terminal,
                OperationEvent::Failed {
                    step,
                    elapsed_ms,
                    message,
                },
            ) => {
                let line = format!(
                    "  {} {step}: {} {}",
                    style("✗").red(),
                    style(message).red(),
                    style(seconds(*elapsed_ms)).dim()
                );
                self.finish_bar(step, line);
            }
            (Mode::Terminal, OperationEvent::Log { message }) => {
                let _ = self.multi.println(format!("    {}", style(message).dim()));
            }
            (Mode::Terminal, OperationEvent::Transfer { step, bytes, total }) => {
                if let Some(bar) = self.bars.get(step) {
                    let template = match total {
                        Some(total) => {
                            bar.set_length(*total);
                            "  {spinner:.cyan} {msg} [{bar:24.cyan/dim}] {bytes}/{total_bytes} {bytes_per_sec:.dim} {elapsed:.dim}"
                        }
                        None => {
                            "  {spinner:.cyan} {msg} {bytes} {bytes_per_sec:.dim} {elapsed:.dim}"
                        }
                    };
                    bar.set_style(
                        ProgressStyle::with_template(template)
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_position(*bytes);
                }
            }
            // Without a terminal, transfers stay quiet: the step's result line follows.
            (Mode::Plain, OperationEvent::Transfer { .. }) => {}
            (Mode::Plain, OperationEvent::Started { .. }) => {}
            (
                Mode::Plain,
                OperationEvent::Done {
                    step,
                    elapsed_ms,
                    detail,
                },
            ) => {
                eprintln!(
                    "  ✓ {step}{} ({})",
                    detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default(),
                    seconds(*elapsed_ms)
                );
            }
            (
                Mode::Plain,
                OperationEvent::Failed {
                    step,
                    elapsed_ms,
                    message,
                },
            ) => {
                eprintln!("  ✗ {step}: {message} ({})", seconds(*elapsed_ms));
            }
            (Mode::Plain, OperationEvent::Log { message }) => eprintln!("    {message}"),
        }
    }

    /// A finished step leaves the live area (only running steps spin there) and is printed
    /// above it for good, so later lines never redraw over it.
    fn finish_bar(&mut self, step: &str, line: String) {
        if let Some(bar) = self.bars.remove(step) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let _ = self.multi.println(line);
    }

    /// Clears any spinner left (the stream ended early).
    pub fn close(&mut self) {
        for (_, bar) in self.bars.drain() {
            bar.finish_and_clear();
        }
    }
}

/// Prints an operation's outcome; returns whether it succeeded.
pub fn outcome(mode: Mode, outcome: &Outcome) {
    if mode == Mode::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(outcome).unwrap_or_default()
        );
        return;
    }
    if let Some(backups) = &outcome.backups {
        backups_outcome(mode, outcome, backups);
        return;
    }
    if outcome.ok {
        let release = outcome
            .release
            .map(|r| format!("release {r}"))
            .unwrap_or_else(|| "the app".into());
        let version = outcome
            .version
            .as_ref()
            .map(|v| format!(" ({v})"))
            .unwrap_or_default();
        if outcome.operation == "upgrade" {
            println!(
                "{} the agent runs berth {} now (after {}); the old process drains and exits",
                style("✓").green().bold(),
                outcome.version.as_deref().unwrap_or("?"),
                seconds(outcome.elapsed_ms)
            );
            return;
        }
        if outcome.operation == "destroy" {
            println!(
                "{} {} destroyed after {}; its backups are kept (`berth backup list` next to its berth.toml lists them)",
                style("✓").green().bold(),
                style(&outcome.app).bold(),
                seconds(outcome.elapsed_ms),
            );
            return;
        }
        let verb = match outcome.operation.as_str() {
            "restart" => "restarted",
            "stop" => "stopped",
            "start" => "started and live",
            _ => "is live",
        };
        println!(
            "{} {} {release}{version} {verb} after {}",
            style("✓").green().bold(),
            style(&outcome.app).bold(),
            seconds(outcome.elapsed_ms)
        );
        for url in &outcome.urls {
            println!("  {}", style(url).cyan().underlined());
        }
        return;
    }
    let Some(error) = &outcome.error else { return };
    let release = outcome
        .release
        .map(|r| format!(" (release {r})"))
        .unwrap_or_default();
    eprintln!(
        "{} {} of {}{release} failed: {}",
        style("error:").red().bold(),
        outcome.operation,
        outcome.app,
        error.message
    );
    if !error.log_tail.is_empty() {
        eprintln!(
            "  last lines of {}:",
            error.log_source.as_deref().unwrap_or("the log")
        );
        for line in &error.log_tail {
            eprintln!("    {}", style(line).dim());
        }
    }
    if let Some(hint) = &error.hint {
        for line in hint.lines() {
            eprintln!("  {} {line}", style("→").yellow());
        }
    }
}

/// A byte count for people: `512 B`, `1.6 MiB`.
pub fn bytes(n: u64) -> String {
    berth_api::human_bytes(n)
}

/// A local date and time for a Unix time in milliseconds.
pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// `3d4h`, `5m`, `12s`.
pub fn age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        (seconds % 86_400) / 3600,
        (seconds % 3600) / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Left-aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(console::measure_text_width(cell));
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(console::measure_text_width(cell));
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.trim_end().to_owned()
    };
    out.push_str(&line(
        headers
            .iter()
            .map(|h| style(h).bold().to_string())
            .collect(),
    ));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// What a backup, verify, prune or restore did, then its error if it failed.
fn backups_outcome(mode: Mode, outcome: &Outcome, backups: &BackupsOutcome) {
    // In a terminal the steps above already showed each copy and warning; the summary
    // then says only what came of each backup. Piped, stdout carries it all.
    let detailed = mode != Mode::Terminal;
    let mark = |ok: bool| {
        if ok {
            style("✓").green().bold()
        } else {
            style("✗").red().bold()
        }
    };
    for run in &backups.runs {
        let ok = run.status == berth_api::RunStatus::Ok;
        match &run.id {
            Some(id) if run.status != berth_api::RunStatus::Failed => println!(
                "{} {} {} {}: {} read, {} stored",
                mark(ok),
                style(&outcome.app).bold(),
                run.name,
                style(id).cyan(),
                bytes(run.content_size.unwrap_or(0)),
                bytes(run.size.unwrap_or(0)),
            ),
            _ => println!(
                "{} {} {}: failed",
                mark(false),
                style(&outcome.app).bold(),
                run.name
            ),
        }
        for copy in run.copies.iter().filter(|_| detailed) {
            match (&copy.check, &copy.error) {
                (Some(check), _) => {
                    println!("    {} {}: verified ({check})", mark(true), copy.storage)
                }
                (_, Some(error)) => println!(
                    "    {} {}: {}",
                    mark(false),
                    copy.storage,
                    style(error).red()
                ),
                _ => {}
            }
        }
    }
    // The same warning often holds for every backup of a run: say it once.
    let mut warnings: Vec<&String> = backups.runs.iter().flat_map(|r| &r.warnings).collect();
    warnings.sort();
    warnings.dedup();
    for warning in warnings.into_iter().filter(|_| detailed) {
        println!("  {} {warning}", style("!").yellow());
    }
    for prune in &backups.pruned {
        if !prune.untrusted.is_empty() {
            println!(
                "  {} {} on {}: left {} backups whose records berth cannot vouch for ({}); see `berth backup list`",
                style("?").yellow(),
                prune.name,
                prune.storage,
                prune.untrusted.len(),
                prune.untrusted.join(", ")
            );
        }
        match &prune.error {
            None if !detailed => {}
            None => println!(
                "  {} {} on {}: {} {}, {} kept",
                style("-").dim(),
                prune.name,
                prune.storage,
                if prune.dry_run {
                    "would remove"
                } else {
                    "removed"
                },
                prune.removed.len(),
                prune.kept.len()
            ),
            Some(error) => println!(
                "  {} pruning {} on {}: {}",
                mark(false),
                prune.name,
                prune.storage,
                style(error).red()
            ),
        }
    }
    for verified in &backups.verified {
        match (&verified.check, &verified.error) {
            (Some(check), _) => println!(
                "{} {} {} on {}: {check}",
                mark(true),
                verified.name,
                verified.id,
                verified.storage
            ),
            (_, error) => println!(
                "{} {} {} on {}: {}",
                mark(false),
                verified.name,
                verified.id,
                verified.storage,
                style(error.as_deref().unwrap_or("failed")).red()
            ),
        }
    }
    if let Some(restored) = &backups.restored {
        println!(
            "{} restored {} {} from {} to {} in {}",
            mark(true),
            restored.name,
            style(&restored.id).cyan(),
            restored.storage,
            restored.target,
            seconds(outcome.elapsed_ms)
        );
        for action in &restored.actions {
            println!("    {} {action}", style("·").dim());
        }
        if let Some(safety) = &restored.safety_backup {
            println!(
                "  the data it replaced is in safety backup {}",
                style(safety).cyan()
            );
        }
    }
    if outcome.ok {
        return;
    }
    let Some(error) = &outcome.error else { return };
    eprintln!(
        "{} {} of {} failed: {}",
        style("error:").red().bold(),
        outcome.operation,
        outcome.app,
        error.message
    );
    if let Some(hint) = &error.hint {
        for line in hint.lines() {
            eprintln!("  {} {line}", style("→").yellow());
        }
    }
}

/// `berth backup list` as a table.
pub fn backup_list(list: &BackupList) {
    if list.backups.is_empty() {
        println!("no backups yet");
    } else {
        let now = jiff::Timestamp::now().as_millisecond();
        let rows: Vec<Vec<String>> = list
            .backups
            .iter()
            .map(|b| {
                let storage: Vec<String> = b
                    .copies
                    .iter()
                    .map(|c| match (&c.verify_error, &c.untrusted) {
                        (_, Some(_)) => format!("{} ?", c.storage),
                        (Some(_), None) => format!("{} ✗", c.storage),
                        (None, None) => c.storage.clone(),
                    })
                    .collect();
                let verified = b
                    .copies
                    .iter()
                    .map(|c| c.verified_at)
                    .min()
                    .map(|t| format!("{} ago", age(((now - t).max(0) / 1000) as u64)))
                    .unwrap_or_default();
                vec![
                    b.name.clone(),
                    b.id.clone(),
                    time(b.created_at),
                    bytes(b.size),
                    bytes(b.content_size),
                    storage.join(", "),
                    verified,
                    match (
                        b.copies.iter().find_map(|c| c.untrusted.as_deref()),
                        b.reason.as_str(),
                    ) {
                        (Some(trust), _) => format!("UNTRUSTED ({trust})"),
                        (None, "safety") => "safety".into(),
                        _ => String::new(),
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "NAME", "ID", "TAKEN", "STORED", "DATA", "STORAGE", "VERIFIED", ""
                ],
                &rows
            )
        );
    }
    for warning in &list.warnings {
        eprintln!("{} {warning}", style("warning:").yellow());
    }
    for backup in &list.backups {
        for copy in &backup.copies {
            if let Some(trust) = &copy.untrusted {
                eprintln!(
                    "{} {} {} on {}: berth cannot vouch for its record ({trust}: not signed by this server's backup key); it is not restored without --allow-untrusted, counted or pruned",
                    style("?").yellow(),
                    backup.name,
                    backup.id,
                    copy.storage
                );
            }
            if let Some(error) = &copy.verify_error {
                eprintln!(
                    "{} {} {} on {} failed its last verification: {error}",
                    style("✗").red(),
                    backup.name,
                    backup.id,
                    copy.storage
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(super::shorten("short", 10), "short");
        assert_eq!(super::shorten("exactly10!", 10), "exactly10!");
        assert_eq!(super::shorten("a bit too long", 10), "a bit too…");
        assert_eq!(
            super::shorten("ééééééé", 4),
            "ééé…",
            "characters, not bytes"
        );
    }

    use super::*;

    #[test]
    fn ages_and_durations_read_naturally() {
        assert_eq!(age(12), "12s");
        assert_eq!(age(312), "5m12s");
        assert_eq!(age(7_500), "2h5m");
        assert_eq!(age(200_000), "2d7h");
        assert_eq!(seconds(250), "250ms");
        assert_eq!(seconds(1_250), "1.2s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_700_000), "1.6 MiB");
    }
}
