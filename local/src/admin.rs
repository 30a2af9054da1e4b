//! The admin command line's client: talks to a deployment's API with the admin token, prints
//! aligned tables for people or JSON for scripts.

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Exit codes scripts can trust.
pub mod exit {
    pub const OK: u8 = 0;
    /// The API refused the request (4xx): bad input, unknown license or user, bad token.
    pub const REFUSED: u8 = 1;
    /// Usage error (clap's own).
    pub const USAGE: u8 = 2;
    /// The service could not be reached or a store is down (5xx): try again later.
    pub const UNAVAILABLE: u8 = 3;
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A failed call, with the exit code it maps to.
#[derive(Debug)]
pub struct CallError {
    pub code: u8,
    pub message: String,
}

impl Client {
    pub fn new(api_url: &str, token: Option<String>) -> Self {
        Client {
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("http client"),
            base: api_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CallError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError { code: exit::UNAVAILABLE, message: format!("cannot reach {}: {e}", self.base) })?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().unwrap_or("no message").to_owned();
        let code = value["error"]["code"].as_str().unwrap_or("error").to_owned();
        Err(CallError {
            code: if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                exit::UNAVAILABLE
            } else {
                exit::REFUSED
            },
            message: format!("{} {code}: {message}", status.as_u16()),
        })
    }
}

/// Percent-encodes one path or query component.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints rows as a table with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders an API answer for people.
pub fn render(kind: &str, v: &Value) -> String {
    // Rows of an array of objects, one column per key.
    let rows = |arr: &Value, keys: &[&str]| -> Vec<Vec<String>> {
        arr.as_array()
            .map(|a| a.iter().map(|item| keys.iter().map(|k| cell(&item[*k])).collect()).collect())
            .unwrap_or_default()
    };
    // Rows of the `features` map: the feature's name, then one column per key.
    let feature_rows = |keys: &[&str]| -> Vec<Vec<String>> {
        v["features"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(f, s)| std::iter::once(f.clone()).chain(keys.iter().map(|k| cell(&s[*k]))).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    match kind {
        "license-deleted" => {
            format!("removed license {}; ended {} session(s)", cell(&v["licenseId"]), cell(&v["ended"]))
        }
        "force-cleanup" => {
            let ids: Vec<Vec<String>> =
                v["sessionIds"].as_array().map(|a| a.iter().map(|s| vec![cell(s)]).collect()).unwrap_or_default();
            format!(
                "ended {} session(s) of {} for {}\n{}",
                cell(&v["ended"]),
                cell(&v["userId"]),
                cell(&v["feature"]),
                table(&["SESSION"], &ids)
            )
        }
        "debug" => {
            let sessions = [
                "sessionId",
                "licenseId",
                "status",
                "createdAt",
                "lastHeartbeatAt",
                "expiresAt",
                "inSeatStore",
                "inLedger",
            ];
            let licenses = ["licenseId", "limit", "active", "seatStoreActive", "ledgerActive", "consistent"];
            format!(
                "{}\n\n{}",
                table(
                    &["SESSION", "LICENSE", "STATUS", "CREATED", "LAST HEARTBEAT", "EXPIRES", "SEAT STORE", "LEDGER"],
                    &rows(&v["sessions"], &sessions)
                ),
                table(
                    &["LICENSE", "LIMIT", "ACTIVE", "SEAT STORE", "LEDGER", "CONSISTENT"],
                    &rows(&v["licenses"], &licenses)
                ),
            )
        }
        "stats" => table(
            &[
                "FEATURE",
                "LIMIT",
                "ACTIVE",
                "PEAK",
                "CREATED",
                "ENDED",
                "EXPIRED",
                "EVICTED",
                "REPLACED",
                "FORCE ENDED",
                "REFUSED",
                "AVG SECONDS",
            ],
            &feature_rows(&[
                "limit",
                "active",
                "peakActive",
                "created",
                "ended",
                "expired",
                "evicted",
                "replaced",
                "forceEnded",
                "limitRejections",
                "averageSessionSeconds",
            ]),
        ),
        "licenses" => {
            let mut out = Vec::new();
            for l in v["licenses"].as_array().into_iter().flatten() {
                for (f, p) in l["features"].as_object().into_iter().flatten() {
                    out.push(vec![cell(&l["licenseId"]), f.clone(), cell(&p["maxSessions"]), cell(&p["active"])]);
                }
            }
            let next = match v["nextCursor"].as_str() {
                Some(c) => format!("\nnext page: --cursor {c}"),
                None => String::new(),
            };
            format!("{}{next}", table(&["LICENSE", "FEATURE", "LIMIT", "LIVE"], &out))
        }
        "sessions" => {
            let now = chrono::Utc::now();
            let ago = |t: &Value| {
                t.as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| format!("{}s ago", (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0)))
                    .unwrap_or_else(|| cell(t))
            };
            // The time of day (UTC) a session started: its date only when not today's.
            let since = |t: &Value| {
                let s = cell(t);
                match s.split_once('T') {
                    Some((day, time)) if day == now.format("%Y-%m-%d").to_string() => {
                        time.get(..8).unwrap_or(time).to_owned()
                    }
                    _ => s,
                }
            };
            let out: Vec<Vec<String>> = v["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    vec![
                        cell(&x["sessionId"]),
                        cell(&x["userId"]),
                        cell(&x["feature"]),
                        cell(&x["deviceId"]),
                        since(&x["createdAt"]),
                        ago(&x["lastHeartbeatAt"]),
                    ]
                })
                .collect();
            format!(
                "license {}: {} live session(s)\n{}",
                cell(&v["licenseId"]),
                out.len(),
                table(&["SESSION", "USER", "FEATURE", "DEVICE", "SINCE (UTC)", "LAST BEAT"], &out)
            )
        }
        "session-ended" => match v["ended"].as_bool() {
            Some(true) => format!("ended session {}", cell(&v["sessionId"])),
            _ => format!("session {} was already over ({})", cell(&v["sessionId"]), cell(&v["reason"])),
        },
        "key-rotated" => format!(
            "new key for license {} (shown once; the old key no longer takes seats):\n{}",
            cell(&v["licenseId"]),
            cell(&v["key"])
        ),
        "admin-token" => format!(
            "token {} for license {} (shown once; store it now):\n{}",
            cell(&v["tokenId"]),
            cell(&v["licenseId"]),
            cell(&v["token"])
        ),
        "admin-token-revoked" => format!("revoked token {}; it no longer works", cell(&v["tokenId"])),
        "usage" => format!(
            "license {} feature {}, steps of {} s\n{}",
            cell(&v["licenseId"]),
            cell(&v["feature"]),
            cell(&v["stepSeconds"]),
            table(
                &["STEP START (UTC)", "PEAK ACTIVE", "STARTED", "REFUSED"],
                &rows(&v["points"], &["at", "peakActive", "started", "limitRejections"])
            )
        ),
        "license" => {
            let key = v["key"].as_str().map(|k| format!("key (shown once): {k}\n")).unwrap_or_default();
            let policy = [
                "maxSessions",
                "maxSessionsPerUser",
                "onLimit",
                "leaseTtlSeconds",
                "heartbeatIntervalSeconds",
                "resurrectWindowSeconds",
            ];
            format!(
                "license {}\n{key}{}",
                cell(&v["licenseId"]),
                table(
                    &["FEATURE", "MAX", "PER USER", "ON LIMIT", "LEASE S", "HEARTBEAT S", "RESURRECT S"],
                    &feature_rows(&policy)
                )
            )
        }
        _ => {
            let m = v.as_object().cloned().unwrap_or_default();
            table(&["FIELD", "VALUE"], &m.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect::<Vec<_>>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22");
    }

    #[test]
    fn usage_renders_one_row_per_step_within_100_columns() {
        let v = serde_json::json!({"licenseId": "l".repeat(128), "feature": "f", "stepSeconds": 3600, "points": [
            {"at": "2026-01-31T00:00:00.000Z", "peakActive": 12, "started": 30, "limitRejections": 4},
            {"at": "2026-01-31T01:00:00.000Z", "peakActive": 0, "started": 0, "limitRejections": 0},
        ]});
        let out = render("usage", &v);
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines.iter().all(|l| l.len() <= 100), "{out}");
        assert!(lines[1].starts_with("2026-01-31T00:00:00.000Z") && lines[1].ends_with('4'), "{out}");
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(enc("a@b:c/d e"), "a%40b%3Ac%2Fd%20e");
        assert_eq!(enc("plain-1.2_x"), "plain-1.2_x");
    }
}
