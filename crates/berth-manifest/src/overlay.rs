//! `[environments.NAME]` overlays: deep-merged into the base document before it is
//! deserialized, so every value keeps the span of the line that set it.

use crate::diagnostic::Diagnostic;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Removes `environments` from the document and, when `selected` names one, merges it in.
///
/// Tables merge key by key; any other value (including arrays) replaces the base value.
/// Returns whether the overlay set `app` itself.
pub(crate) fn apply(root: &mut DeTable<'_>, selected: Option<&str>) -> Result<bool, Diagnostic> {
    let environments = root.remove("environments");
    let Some(name) = selected else {
        return Ok(false);
    };
    let Some(environments) = environments else {
        return Err(Diagnostic::new(
            format!(
                "environment `{name}` is not defined: the manifest has no [environments] table"
            ),
            None,
        )
        .with_help(format!("add an [environments.{name}] table, or drop --env")));
    };
    let span = environments.span();
    let DeValue::Table(mut table) = environments.into_inner() else {
        return Err(Diagnostic::new(
            "`environments` must be a table of overlays such as [environments.staging]",
            Some(span),
        ));
    };
    let Some(overlay) = table.remove(name) else {
        let known: Vec<String> = table.keys().map(|k| format!("`{}`", k.get_ref())).collect();
        let help = if known.is_empty() {
            "no environments are defined".to_owned()
        } else {
            format!("defined environments: {}", known.join(", "))
        };
        return Err(
            Diagnostic::new(format!("environment `{name}` is not defined"), Some(span))
                .with_help(help),
        );
    };
    let overlay_span = overlay.span();
    let DeValue::Table(overlay) = overlay.into_inner() else {
        return Err(Diagnostic::new(
            format!("`environments.{name}` must be a table"),
            Some(overlay_span),
        ));
    };
    let sets_app = overlay.contains_key("app");
    merge(root, overlay);
    Ok(sets_app)
}

/// Names of the environments a document defines, in file order.
pub(crate) fn names(root: &DeTable<'_>) -> Vec<String> {
    match root.get("environments").map(|v| v.get_ref()) {
        Some(DeValue::Table(table)) => table.keys().map(|k| k.get_ref().to_string()).collect(),
        _ => Vec::new(),
    }
}

fn merge<'i>(base: &mut DeTable<'i>, overlay: DeTable<'i>) {
    for (key, value) in overlay {
        match (base.get_mut(key.get_ref().as_ref()), value) {
            (Some(existing), value) if is_table(existing) && is_table(&value) => {
                if let (DeValue::Table(into), DeValue::Table(from)) =
                    (existing.get_mut(), value.into_inner())
                {
                    merge(into, from);
                }
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn is_table(value: &Spanned<DeValue<'_>>) -> bool {
    matches!(value.get_ref(), DeValue::Table(_))
}
