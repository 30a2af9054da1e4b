//! Holds the HTTP reference `docs/API.md` to the server: it must name exactly the routes of the
//! route table (`seatkeeper_core::http::ROUTES`), as `shared/openapi.json` must; it must document
//! every error code the server can answer with, at the status the server gives it, and every end
//! reason; and the README must point at it and at nothing outside the repository (a clone has no
//! `../shared/`). No server is started: these read files and the core's tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use seatkeeper_tests::seatkeeper_core::domain::{EndReason, LimitScope};
use seatkeeper_tests::seatkeeper_core::error::{Error, Store};
use seatkeeper_tests::seatkeeper_core::http::{ApiError, ROUTES};
use serde_json::Value;

/// A route as `METHOD /path/{param}`.
type RouteKey = (String, String);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn show(routes: &BTreeSet<RouteKey>) -> String {
    routes.iter().map(|(m, p)| format!("\n    {m} {p}")).collect()
}

fn table_routes() -> BTreeSet<RouteKey> {
    ROUTES.iter().map(|r| (r.method.as_str().to_owned(), r.path.to_owned())).collect()
}

/// Fails naming what `found` (from `source`) lacks and what it has beyond the route table.
fn assert_same_routes(source: &str, how_to_add: &str, found: &BTreeSet<RouteKey>) {
    let table = table_routes();
    let missing: BTreeSet<RouteKey> = table.difference(found).cloned().collect();
    let extra: BTreeSet<RouteKey> = found.difference(&table).cloned().collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{source} is missing these routes of the route table (shared/src/http/mod.rs, ROUTES); {how_to_add}:{}",
            show(&missing)
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{source} names routes that the route table (shared/src/http/mod.rs, ROUTES) does not serve:{}",
            show(&extra)
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `POST /api/licenses/sessions` -> the route, if the text is one.
fn parse_route(text: &str) -> Option<RouteKey> {
    let (method, path) = text.trim().split_once(' ')?;
    let path = path.trim();
    (!method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) && path.starts_with('/'))
        .then(|| (method.to_owned(), path.to_owned()))
}

/// The first `` `code span` `` of a line.
fn first_code_span(line: &str) -> Option<&str> {
    let start = line.find('`')? + 1;
    let len = line[start..].find('`')?;
    Some(&line[start..start + len])
}

/// The cells of a Markdown table row, trimmed, without the outer pipes.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

fn unquote(cell: &str) -> &str {
    cell.trim_matches('`')
}

/// The routes of docs/API.md's per-route sections: one heading ``### `METHOD /path` `` each.
fn doc_section_routes(doc: &str) -> BTreeSet<RouteKey> {
    let mut seen = BTreeSet::new();
    let mut twice = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("### ")) {
        if let Some(route) = first_code_span(line).and_then(parse_route) {
            if !seen.insert(route.clone()) {
                twice.push(format!("{} {}", route.0, route.1));
            }
        }
    }
    assert!(twice.is_empty(), "docs/API.md has more than one section for: {}", twice.join(", "));
    seen
}

/// The routes of docs/API.md's index table, between `<!-- routes:start -->` and `<!-- routes:end -->`.
fn doc_index_routes(doc: &str) -> BTreeSet<RouteKey> {
    let start = doc.find("<!-- routes:start -->").expect("docs/API.md has a route index: <!-- routes:start -->");
    let end = doc[start..].find("<!-- routes:end -->").expect("docs/API.md's route index ends: <!-- routes:end -->");
    let mut routes = BTreeSet::new();
    for row in doc[start..start + end].lines().filter_map(cells) {
        let (Some(method), Some(path)) = (row.first().map(|c| unquote(c)), row.get(1).map(|c| unquote(c))) else {
            continue;
        };
        // The header row and the separator row are no routes.
        if let Some(route) = parse_route(&format!("{method} {path}")) {
            assert!(routes.insert(route.clone()), "docs/API.md's route index lists {method} {path} twice");
        }
    }
    routes
}

fn openapi() -> Value {
    serde_json::from_str(&read("shared/openapi.json")).expect("shared/openapi.json is JSON")
}

/// OpenAPI's operations, `HEAD` and `OPTIONS` left out (the server derives them: `HEAD` from each
/// `GET`, `OPTIONS` for every path): (method, path) -> operationId.
fn openapi_routes(doc: &Value) -> BTreeMap<RouteKey, String> {
    let paths = doc["paths"].as_object().expect("shared/openapi.json has paths");
    let mut out = BTreeMap::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            if matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                let id = op["operationId"].as_str().unwrap_or("").to_owned();
                out.insert((method.to_ascii_uppercase(), path.clone()), id);
            }
        }
    }
    out
}

#[test]
fn the_reference_has_one_section_per_route_of_the_route_table() {
    let doc = read("docs/API.md");
    assert_same_routes(
        "docs/API.md (its ### `METHOD /path` section headings)",
        "give each a section headed ### `METHOD /path`",
        &doc_section_routes(&doc),
    );
}

#[test]
fn the_reference_index_lists_every_route_of_the_route_table() {
    let doc = read("docs/API.md");
    assert_same_routes(
        "docs/API.md's route index (between <!-- routes:start --> and <!-- routes:end -->)",
        "add a row | `METHOD` | `/path` | ... | to it",
        &doc_index_routes(&doc),
    );
}

#[test]
fn the_openapi_document_has_the_routes_of_the_route_table() {
    let doc = openapi();
    let ops = openapi_routes(&doc);
    assert_same_routes(
        "shared/openapi.json (its paths, HEAD and OPTIONS aside)",
        "add each under paths",
        &ops.keys().cloned().collect(),
    );
    let wrong_ids: Vec<String> = ROUTES
        .iter()
        .filter_map(|r| {
            let key = (r.method.as_str().to_owned(), r.path.to_owned());
            let id = ops.get(&key)?;
            (id != r.operation_id)
                .then(|| format!("{} {}: {id:?}, the route table says {:?}", key.0, key.1, r.operation_id))
        })
        .collect();
    assert!(
        wrong_ids.is_empty(),
        "shared/openapi.json's operationIds differ from the route table's:\n    {}",
        wrong_ids.join("\n    ")
    );
    // Every GET answers HEAD too, and the document says so.
    let heads: BTreeSet<String> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, item)| item.get("head").is_some())
        .map(|(p, _)| p.clone())
        .collect();
    let gets: BTreeSet<String> =
        ROUTES.iter().filter(|r| r.method.as_str() == "GET").map(|r| r.path.to_owned()).collect();
    assert_eq!(heads, gets, "shared/openapi.json: the paths with a HEAD operation must be exactly the GET routes");
}

/// One error of each kind the core maps to the contract's shape, as the server answers it. Adding
/// a variant to `Error` breaks the `match` below until it is given a sample here too.
fn core_errors() -> Vec<ApiError> {
    let samples = vec![
        Error::InvalidRequest { field: Some("userId".into()), message: "userId is required".into() },
        Error::Unauthorized("unknown license key"),
        Error::Forbidden("the license key does not belong to licenseId"),
        Error::NotFound("license x not found".into()),
        Error::SeatLimitReached { scope: LimitScope::License, limit: 1, active: 1, retry_after_seconds: 1 },
        Error::SessionExpired { reason: EndReason::Expired },
        Error::StoreUnavailable { store: Store::SeatStore, detail: "down".into(), transient: false },
    ];
    for e in &samples {
        match e {
            Error::InvalidRequest { .. }
            | Error::Unauthorized(_)
            | Error::Forbidden(_)
            | Error::NotFound(_)
            | Error::SeatLimitReached { .. }
            | Error::SessionExpired { .. }
            | Error::StoreUnavailable { .. } => {}
        }
    }
    let mut out: Vec<ApiError> = samples.into_iter().map(ApiError::from).collect();
    out.push(ApiError::payload_too_large());
    out
}

/// `METHOD_NOT_ALLOWED` -> 405: the status codes by the names of their `StatusCode` constants.
fn status_by_name() -> BTreeMap<String, u16> {
    (100..600u16)
        .filter_map(|n| {
            let status = lambda_http::http::StatusCode::from_u16(n).ok()?;
            let name = status.canonical_reason()?.to_ascii_uppercase().replace([' ', '-'], "_").replace('\'', "");
            Some((name, n))
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every error the server's sources build as `(StatusCode::NAME, "code", ...)` (the core's
/// `ApiError::new`, the local runner's errors below the handlers): code -> statuses. Only 4xx and
/// 5xx count.
fn source_error_codes() -> BTreeMap<String, BTreeSet<u16>> {
    let statuses = status_by_name();
    let mut files = Vec::new();
    for dir in ["shared/src", "local/src", "functions/src"] {
        rust_files(&repo_root().join(dir), &mut files);
    }
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("StatusCode::") {
            rest = &rest[at + "StatusCode::".len()..];
            let name_len = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_')).unwrap_or(rest.len());
            let name = &rest[..name_len];
            let after = rest[name_len..].trim_start();
            let Some(after) = after.strip_prefix(',').map(str::trim_start) else { continue };
            let Some(after) = after.strip_prefix('"') else { continue };
            let Some(code_len) = after.find('"') else { continue };
            let code = &after[..code_len];
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            let status = *statuses
                .get(name)
                .unwrap_or_else(|| panic!("{}: StatusCode::{name} is not a status this test knows", file.display()));
            if status >= 400 {
                out.entry(code.to_owned()).or_default().insert(status);
            }
        }
    }
    out
}

/// docs/API.md's error table: rows `| 409 | `seat_limit_reached` | ...`: code -> statuses.
fn doc_error_codes(doc: &str) -> BTreeMap<String, BTreeSet<u16>> {
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for row in doc.lines().filter_map(cells) {
        let (Some(status), Some(code)) = (row.first(), row.get(1)) else { continue };
        let (Ok(status), true) = (status.parse::<u16>(), code.starts_with('`')) else { continue };
        out.entry(unquote(code).to_owned()).or_default().insert(status);
    }
    out
}

#[test]
fn the_reference_documents_every_error_code_at_its_status() {
    let doc = read("docs/API.md");
    let documented = doc_error_codes(&doc);

    let mut server: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for e in core_errors() {
        server.entry(e.code.to_owned()).or_default().insert(e.status.as_u16());
    }
    let scanned = source_error_codes();
    // The scan must at least see what the core maps, or it has stopped reading the sources right.
    for (code, statuses) in &server {
        assert!(
            scanned.get(code).is_some_and(|s| s.is_superset(statuses)),
            "the source scan missed {code} {statuses:?}: fix source_error_codes() in tests/tests/reference.rs"
        );
    }
    for (code, statuses) in scanned {
        server.entry(code).or_default().extend(statuses);
    }

    let mut problems = Vec::new();
    for (code, statuses) in &server {
        match documented.get(code) {
            None if !doc.contains(&format!("`{code}`")) => {
                problems.push(format!("{code} (status {statuses:?}) appears nowhere in docs/API.md"))
            }
            None => problems.push(format!(
                "{code} (status {statuses:?}) has no row in docs/API.md's error table (| status | `code` | ...)"
            )),
            Some(doc_statuses) if doc_statuses != statuses => problems.push(format!(
                "{code}: the server answers it with {statuses:?}, docs/API.md's error table says {doc_statuses:?}"
            )),
            Some(_) => {}
        }
    }
    for code in documented.keys().filter(|c| !server.contains_key(*c)) {
        problems.push(format!("docs/API.md's error table lists {code}, which the server never answers with"));
    }
    for reason in EndReason::ALL {
        if !doc.contains(&format!("`{}`", reason.as_str())) {
            problems.push(format!("the end reason {} appears nowhere in docs/API.md", reason.as_str()));
        }
    }
    assert!(problems.is_empty(), "docs/API.md and the server's error codes differ:\n    {}", problems.join("\n    "));

    // The OpenAPI document's list of codes is the same set.
    let enum_codes: BTreeSet<String> = openapi()["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("shared/openapi.json has components.schemas.ErrorCode.enum")
        .iter()
        .map(|c| c.as_str().expect("error codes are strings").to_owned())
        .collect();
    let server_codes: BTreeSet<String> = server.keys().cloned().collect();
    assert_eq!(
        enum_codes, server_codes,
        "shared/openapi.json's ErrorCode enum (left) differs from the codes the server answers with (right)"
    );
}

/// The targets of a Markdown file's links: inline `[text](target)` and `[label]: target`
/// definitions, outside fenced code blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("").trim_matches(['<', '>']);
            out.push(target.to_owned());
            rest = &rest[end..];
        }
        let t = line.trim_start();
        if let Some(def) = t.strip_prefix('[').and_then(|d| d.split_once("]:")).map(|(_, target)| target.trim()) {
            if let Some(target) = def.split_whitespace().next() {
                out.push(target.to_owned());
            }
        }
    }
    out
}

/// Problems with the links of `file` (repository-relative): a target outside the repository, a
/// `file:` URL or absolute path, or a relative target that does not exist.
fn link_problems(file: &str) -> Vec<String> {
    let root = repo_root();
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    let text = read(file);
    if text.contains("../shared/") {
        problems.push(format!("{file} mentions ../shared/, which lies outside the repository"));
    }
    for target in link_targets(&text) {
        let path = target.split('#').next().unwrap_or("");
        if path.is_empty() || (target.contains("://") && !target.starts_with("file:")) || target.starts_with("mailto:")
        {
            continue;
        }
        if target.starts_with("file:") || path.starts_with('/') {
            problems.push(format!("{file} links to {target}, outside the repository"));
            continue;
        }
        // Resolve lexically: one `..` too many leaves the repository.
        let mut depth: Vec<&std::ffi::OsStr> = dir.iter().collect();
        let mut outside = false;
        for part in Path::new(path).components() {
            match part {
                Component::ParentDir => outside |= depth.pop().is_none(),
                Component::Normal(p) => depth.push(p),
                _ => {}
            }
        }
        if outside {
            problems.push(format!("{file} links to {target}, outside the repository"));
        } else if !root.join(dir).join(path).exists() {
            problems.push(format!("{file} links to {target}, which does not exist"));
        }
    }
    problems
}

#[test]
fn the_readme_links_to_the_reference_and_nothing_outside_the_repository() {
    let readme = read("README.md");
    let mut problems = link_problems("README.md");
    problems.extend(link_problems("docs/API.md"));
    if !link_targets(&readme).iter().any(|t| t.split('#').next() == Some("docs/API.md")) {
        problems.push("README.md has no link to docs/API.md (write it as [...](docs/API.md))".to_owned());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
