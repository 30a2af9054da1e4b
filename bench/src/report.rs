//! The figures: a table for people, one JSON line for machines. Every figure carries the baseline
//! measured beside it in the same run, and the ratio of the two. Targets are reported, never enforced.

use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Row {
    /// Stable key, e.g. `heartbeat.c50.throughput`.
    pub id: String,
    /// Issue item (1 to 6).
    pub item: u8,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<f64>,
    /// What the baseline is.
    pub baseline_name: String,
    pub target: Option<Target>,
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub text: String,
    pub pass: bool,
}

impl Row {
    pub fn new(item: u8, id: impl Into<String>, figure: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Row {
            id: id.into(),
            item,
            figure: figure.into(),
            value,
            unit,
            baseline: None,
            baseline_name: String::new(),
            target: None,
            note: String::new(),
        }
    }
    pub fn baseline(mut self, value: f64, name: impl Into<String>) -> Self {
        self.baseline = Some(value);
        self.baseline_name = name.into();
        self
    }
    pub fn target(mut self, text: impl Into<String>, pass: bool) -> Self {
        self.target = Some(Target { text: text.into(), pass });
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0 && b.is_finite()).map(|b| self.value / b)
    }
    fn result(&self) -> &'static str {
        match &self.target {
            None => "",
            Some(t) if t.pass => "pass",
            Some(_) => "MISS",
        }
    }
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "item": self.item,
            "figure": self.figure,
            "value": finite(self.value),
            "unit": self.unit,
            "baseline": self.baseline.and_then(finite),
            "baselineName": self.baseline_name,
            "ratio": self.ratio().and_then(finite),
            "target": self.target.as_ref().map(|t| t.text.clone()),
            "pass": self.target.as_ref().map(|t| t.pass),
            "note": self.note,
        })
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some((v * 1e6).round() / 1e6)
}

/// A number for people: thousands separated, or three significant digits for small ones.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1000.0 || (a >= 1.0 && v.fract() == 0.0) || v == 0.0 {
        let n = v.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A count for people: 1, 1,000, 10,000.
pub fn fmt_int(v: usize) -> String {
    fmt_num(v as f64)
}

pub fn fmt_val(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        fmt_num(v)
    } else {
        format!("{} {unit}", fmt_num(v))
    }
}

/// The table, one block per issue item.
pub fn table(rows: &[Row], errors: &[(String, String)]) -> String {
    let titles = [
        "",
        "1. Heartbeat through the core service vs raw EVALSHA",
        "2. Session cycle (create, heartbeat, cleanup) vs the same scripts with no ledger",
        "3. Contended admission",
        "4. Sweep cost",
        "5. HTTP heartbeat through the local runner",
        "6. Memory",
    ];
    let headers = ["figure", "value", "baseline", "ratio", "target", "result"];
    let mut cells: Vec<(u8, [String; 6], String)> = Vec::new();
    for r in rows {
        cells.push((
            r.item,
            [
                r.figure.clone(),
                fmt_val(r.value, r.unit),
                r.baseline.map(|b| fmt_val(b, r.unit)).unwrap_or_else(|| "-".into()),
                r.ratio().map(|x| format!("{}x", fmt_num(x))).unwrap_or_else(|| "-".into()),
                r.target.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                r.result().to_owned(),
            ],
            if r.baseline_name.is_empty() {
                r.note.clone()
            } else if r.note.is_empty() {
                format!("baseline: {}", r.baseline_name)
            } else {
                format!("baseline: {}; {}", r.baseline_name, r.note)
            },
        ));
    }
    let mut width = headers.map(str::len);
    for (_, c, _) in &cells {
        for (i, s) in c.iter().enumerate() {
            width[i] = width[i].max(s.chars().count());
        }
    }
    let line = |c: &[String; 6]| -> String {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            let pad = width[i] - v.chars().count();
            if i == 0 || i >= 4 {
                s.push_str(v);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(v);
            }
            s.push_str(if i < 5 { " | " } else { "" });
        }
        s.trim_end().to_owned()
    };
    let mut out = String::new();
    out.push_str(&line(&headers.map(str::to_owned)));
    out.push('\n');
    out.push_str(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    out.push('\n');
    let mut last = 0;
    for (item, c, note) in &cells {
        if *item != last {
            out.push_str(&format!("{}\n", titles.get(*item as usize).copied().unwrap_or("")));
            last = *item;
        }
        out.push_str(&line(c));
        out.push('\n');
        if !note.is_empty() {
            out.push_str(&format!("    ({note})\n"));
        }
    }
    for (what, e) in errors {
        out.push_str(&format!("ERROR in {what}: {e}\n"));
    }
    out
}
