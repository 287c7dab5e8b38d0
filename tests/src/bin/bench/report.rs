//! The figures of a run: each with its baseline, ratio and goal, printed as a table or JSON.

use std::collections::BTreeMap;

use serde_json::Value;

/// One measured figure, judged against its baseline.
#[derive(serde::Serialize)]
pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) baseline_name: String,
    pub(crate) baseline: f64,
    /// value / baseline.
    pub(crate) ratio: f64,
    /// The budget (docs/PERFORMANCE.md) this figure is held to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pass: Option<bool>,
    /// Why the figure was not measured (a peer not installed, not root): never a pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) skipped: Option<String>,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) figures: Vec<Figure>,
    pub(crate) notes: BTreeMap<String, Value>,
    pub(crate) json: bool,
}

impl Report {
    pub(crate) fn add(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline_name: impl Into<String>,
        baseline: f64,
        budget: Option<(&str, bool)>,
    ) {
        let fig = Figure {
            name: name.into(),
            value,
            unit,
            baseline_name: baseline_name.into(),
            baseline,
            ratio: if baseline != 0.0 {
                value / baseline
            } else {
                f64::NAN
            },
            budget: budget.map(|(b, _)| b.to_string()),
            pass: budget.map(|(_, p)| p),
            skipped: None,
        };
        if !self.json {
            println!(
                "  {:<44} {:>12} {:<6} | {:<34} {:>12} | x{:<8.3} {}",
                fig.name,
                fmt_num(fig.value),
                fig.unit,
                fig.baseline_name,
                fmt_num(fig.baseline),
                fig.ratio,
                match (&fig.budget, fig.pass) {
                    (Some(b), Some(true)) => format!("PASS ({b})"),
                    (Some(b), _) => format!("FAIL ({b})"),
                    _ => String::new(),
                }
            );
        }
        self.figures.push(fig);
    }

    /// A figure that could not be measured here, with its goal and why: printed as SKIPPED,
    /// counted neither as passed nor as failed.
    pub(crate) fn skip(
        &mut self,
        name: impl Into<String>,
        goal: Option<&str>,
        why: impl Into<String>,
    ) {
        let fig = Figure {
            name: name.into(),
            value: f64::NAN,
            unit: "",
            baseline_name: String::new(),
            baseline: f64::NAN,
            ratio: f64::NAN,
            budget: goal.map(str::to_string),
            pass: None,
            skipped: Some(why.into()),
        };
        if !self.json {
            println!(
                "  {:<44} {:>12} {:<6} | {:<34} {:>12} | {:<9} SKIPPED ({})",
                fig.name,
                "-",
                "",
                "",
                "-",
                "-",
                fig.skipped.as_deref().unwrap_or_default()
            );
        }
        self.figures.push(fig);
    }

    pub(crate) fn note(&mut self, key: &str, value: Value) {
        if !self.json {
            println!("    {key}: {value}");
        }
        self.notes.insert(key.into(), value);
    }

    pub(crate) fn section(&self, title: &str) {
        if !self.json {
            println!("\n{title}");
        }
    }
}

pub(crate) fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}
