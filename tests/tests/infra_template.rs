//! Holds the deployment template (`infra/template.yaml`) and the README's route-to-function map to
//! the core's route table, so that none of them can drift from `seatkeeper_core::http::ROUTES`:
//! every route has exactly one function and one HTTP API route with the same method and path, every
//! function's binary exists in `functions/src/bin/`, and there is nothing extra on either side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use seatkeeper_tests::seatkeeper_core::http::ROUTES;
use serde_yaml_ng::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn template() -> Value {
    let path = repo_root().join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("infra/template.yaml is YAML (short tags included)")
}

/// `createSession` -> `create-session`: the binary of a route's function.
fn kebab(operation_id: &str) -> String {
    let mut out = String::new();
    for c in operation_id.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `createSession` -> `CreateSession`: the logical-id stem of a route's resources.
fn pascal(operation_id: &str) -> String {
    let mut chars = operation_id.chars();
    let first = chars.next().expect("operation ids are not empty");
    first.to_ascii_uppercase().to_string() + chars.as_str()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

/// A short-tag node (`!Sub x`, `!GetAtt x`, `!Ref x`) as (tag without `!`, scalar value).
fn tagged(v: &Value) -> Option<(String, &str)> {
    match v {
        Value::Tagged(t) => Some((t.tag.to_string().trim_start_matches('!').to_owned(), t.value.as_str()?)),
        _ => None,
    }
}

struct Function {
    logical_id: String,
    binary: String,
    name_suffix: String,
    gets_admin_token: bool,
}

fn functions(resources: &serde_yaml_ng::Mapping) -> BTreeMap<String, Function> {
    let mut out = BTreeMap::new();
    for (id, res) in resources {
        if str_at(res, &["Type"]) != Some("AWS::Serverless::Function") {
            continue;
        }
        let id = id.as_str().expect("logical ids are strings").to_owned();
        assert_eq!(str_at(res, &["Metadata", "BuildMethod"]), Some("rust-cargolambda"), "{id}: BuildMethod");
        let binary = str_at(res, &["Metadata", "BuildProperties", "Binary"])
            .unwrap_or_else(|| panic!("{id}: Metadata.BuildProperties.Binary names its binary"))
            .to_owned();
        let name = res.get("Properties").and_then(|p| p.get("FunctionName")).and_then(tagged);
        let name_suffix = match name {
            Some((tag, value)) if tag == "Sub" => value
                .strip_prefix("${AWS::StackName}-")
                .unwrap_or_else(|| panic!("{id}: FunctionName is ${{AWS::StackName}}-<operationId>"))
                .to_owned(),
            other => panic!("{id}: FunctionName should be !Sub \"${{AWS::StackName}}-<operationId>\", is {other:?}"),
        };
        let gets_admin_token = res
            .get("Properties")
            .and_then(|p| p.get("Environment"))
            .and_then(|e| e.get("Variables"))
            .and_then(|v| v.get("SEATKEEPER_ADMIN_TOKEN"))
            .is_some();
        out.insert(id.clone(), Function { logical_id: id, binary, name_suffix, gets_admin_token });
    }
    out
}

/// Every HTTP API route of the template: route key -> (function logical id, authorization).
fn api_routes(resources: &serde_yaml_ng::Mapping) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    for (id, res) in resources {
        if str_at(res, &["Type"]) != Some("AWS::ApiGatewayV2::Route") {
            continue;
        }
        let id = id.as_str().expect("logical ids are strings");
        let props = res.get("Properties").unwrap_or_else(|| panic!("{id}: Properties"));
        let key = props.get("RouteKey").and_then(Value::as_str).unwrap_or_else(|| panic!("{id}: RouteKey"));
        let integration = match props.get("Target").and_then(tagged) {
            Some((tag, target)) if tag == "Sub" => target
                .strip_prefix("integrations/${")
                .and_then(|t| t.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{id}: Target is !Sub \"integrations/${{<Integration>}}\""))
                .to_owned(),
            other => panic!("{id}: Target should be !Sub \"integrations/${{<Integration>}}\", is {other:?}"),
        };
        let integ = resources.get(integration.as_str()).unwrap_or_else(|| panic!("{id}: no resource {integration}"));
        assert_eq!(str_at(integ, &["Type"]), Some("AWS::ApiGatewayV2::Integration"), "{integration}");
        assert_eq!(str_at(integ, &["Properties", "IntegrationType"]), Some("AWS_PROXY"), "{integration}");
        assert_eq!(str_at(integ, &["Properties", "PayloadFormatVersion"]), Some("2.0"), "{integration}");
        let function = match integ.get("Properties").and_then(|p| p.get("IntegrationUri")).and_then(tagged) {
            Some((tag, uri)) if tag == "GetAtt" => {
                uri.strip_suffix(".Arn").unwrap_or_else(|| panic!("{integration}: !GetAtt <Function>.Arn")).to_owned()
            }
            other => panic!("{integration}: IntegrationUri should be !GetAtt <Function>.Arn, is {other:?}"),
        };
        let auth = props.get("AuthorizationType").cloned().unwrap_or(Value::Null);
        let previous = out.insert(key.to_owned(), (function, auth));
        assert!(previous.is_none(), "two API routes for {key}");
    }
    out
}

/// Functions that API Gateway may invoke: the `FunctionName` of every `AWS::Lambda::Permission`.
fn invocable(resources: &serde_yaml_ng::Mapping) -> BTreeSet<String> {
    resources
        .values()
        .filter(|r| str_at(r, &["Type"]) == Some("AWS::Lambda::Permission"))
        .filter(|r| str_at(r, &["Properties", "Principal"]) == Some("apigateway.amazonaws.com"))
        .filter_map(|r| r.get("Properties").and_then(|p| p.get("FunctionName")).and_then(tagged))
        .filter(|(tag, _)| tag == "Ref")
        .map(|(_, f)| f.to_owned())
        .collect()
}

fn bin_files() -> BTreeSet<String> {
    let dir = repo_root().join("functions/src/bin");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().into_string().expect("UTF-8 file names"))
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_owned))
        .collect()
}

#[test]
fn every_route_has_exactly_one_function_and_api_route() {
    let doc = template();
    let resources = doc.get("Resources").and_then(Value::as_mapping).expect("Resources");
    let functions = functions(resources);
    let routes = api_routes(resources);
    let invocable = invocable(resources);
    let bins = bin_files();

    let mut expected_keys = BTreeSet::new();
    let mut route_functions = BTreeSet::new();
    for route in ROUTES {
        let key = format!("{} {}", route.method, route.path);
        let (function, _) = routes.get(&key).unwrap_or_else(|| panic!("no API route {key} in the template"));
        let f = functions.get(function).unwrap_or_else(|| panic!("{key}: integration names no function {function}"));
        assert_eq!(f.logical_id, format!("{}Function", pascal(route.operation_id)), "{key}");
        assert_eq!(f.name_suffix, route.operation_id, "{key}: FunctionName ends in the operationId");
        assert_eq!(f.binary, kebab(route.operation_id), "{key}: binary");
        assert!(bins.contains(&f.binary), "{key}: functions/src/bin/{}.rs is missing", f.binary);
        assert!(invocable.contains(function), "{key}: no Lambda permission lets API Gateway invoke {function}");
        assert!(route_functions.insert(function.clone()), "{function} serves two routes");
        expected_keys.insert(key);
    }
    let extra: Vec<_> = routes.keys().filter(|k| !expected_keys.contains(*k)).collect();
    assert!(extra.is_empty(), "API routes that the route table does not have: {extra:?}");

    // Besides the routes' functions there are the sweeper and the webhook sender, and nothing else.
    let others: Vec<_> = functions.keys().filter(|f| !route_functions.contains(*f)).collect();
    assert_eq!(others, ["SweeperFunction", "WebhooksFunction"], "functions that serve no route");
    assert_eq!(functions["SweeperFunction"].binary, "sweeper");
    assert_eq!(functions["WebhooksFunction"].binary, "webhooks");

    // Every binary is deployed, and every deployed binary exists.
    let deployed: BTreeSet<_> = functions.values().map(|f| f.binary.clone()).collect();
    assert_eq!(deployed, bins, "functions/src/bin/ and the template's binaries differ");
}

#[test]
fn admin_routes_alone_carry_the_admin_token_and_may_require_iam() {
    let doc = template();
    let resources = doc.get("Resources").and_then(Value::as_mapping).expect("Resources");
    let functions = functions(resources);
    let mut admin = 0;
    for (key, (function, auth)) in api_routes(resources) {
        let f = &functions[&function];
        let switchable = match auth {
            Value::String(s) => {
                assert_eq!(s, "NONE", "{key}: AuthorizationType");
                false
            }
            Value::Tagged(t) => {
                let parts = t.value.as_sequence().map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>());
                assert_eq!(t.tag.to_string().trim_start_matches('!'), "If", "{key}: AuthorizationType");
                assert_eq!(parts.as_deref(), Some(&["AdminIam", "AWS_IAM", "NONE"][..]), "{key}: AuthorizationType");
                true
            }
            other => panic!("{key}: AuthorizationType {other:?}"),
        };
        assert_eq!(switchable, f.gets_admin_token, "{key}: IAM switch and admin token go together");
        admin += usize::from(switchable);
    }
    assert!(admin > 0, "no admin route found");
    assert!(!functions["SweeperFunction"].gets_admin_token);
}

#[test]
fn functions_run_on_arm64_al2023_with_the_settings_the_service_reads() {
    let doc = template();
    let globals = doc.get("Globals").and_then(|g| g.get("Function")).expect("Globals.Function");
    assert_eq!(str_at(globals, &["Runtime"]), Some("provided.al2023"));
    assert_eq!(str_at(globals, &["Handler"]), Some("bootstrap"));
    let arch: Vec<_> =
        globals.get("Architectures").and_then(Value::as_sequence).expect("Architectures").iter().collect();
    assert_eq!(arch, [&Value::from("arm64")]);
    let vars = globals.get("Environment").and_then(|e| e.get("Variables")).expect("Environment.Variables");
    for name in [
        "SEATKEEPER_REDIS_URL",
        "SEATKEEPER_LEDGER_URL",
        "SEATKEEPER_LEASE_TTL_SECONDS",
        "SEATKEEPER_HEARTBEAT_INTERVAL_SECONDS",
        "SEATKEEPER_SWEEP_INTERVAL_SECONDS",
        "SEATKEEPER_CORS_ORIGINS",
        "RUST_LOG",
    ] {
        assert!(vars.get(name).is_some(), "Globals set {name}");
    }
    // The admin token never has a plain default: it comes from Secrets Manager.
    assert!(vars.get("SEATKEEPER_ADMIN_TOKEN").is_none(), "the admin token is given to admin functions only");
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).expect("template");
    for line in text.lines().filter(|l| l.contains("SEATKEEPER_ADMIN_TOKEN:")) {
        assert!(line.trim_end().ends_with("!If"), "SEATKEEPER_ADMIN_TOKEN is resolved from a secret: {line}");
    }
    assert!(text.contains("{{resolve:secretsmanager:"));

    // The sweeper runs on an EventBridge schedule.
    let sweeper = &doc["Resources"]["SweeperFunction"]["Properties"];
    let events = sweeper.get("Events").and_then(Value::as_mapping).expect("the sweeper has events");
    assert!(events.values().any(|e| str_at(e, &["Type"]) == Some("Schedule")), "the sweeper is scheduled");
    let sweep = doc["Mappings"]["Sweep"].as_mapping().expect("Mappings.Sweep");
    for (minutes, row) in sweep {
        let minutes: u64 = minutes.as_str().and_then(|m| m.parse().ok()).expect("minutes");
        assert_eq!(str_at(row, &["Schedule"]), Some(format!("rate({minutes} minutes)").as_str()));
        assert_eq!(str_at(row, &["Seconds"]), Some((minutes * 60).to_string().as_str()));
    }
}

/// The README's route-to-function map lists exactly the route table, in its order.
#[test]
fn readme_route_map_matches_the_route_table() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme.find("<!-- route-map:start -->").expect("README has the route map markers");
    let end = readme.find("<!-- route-map:end -->").expect("README has the route map end marker");
    let rows: Vec<Vec<String>> = readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect())
        .collect();
    let mut expected: Vec<Vec<String>> = ROUTES
        .iter()
        .map(|r| {
            vec![
                r.method.to_string(),
                r.path.to_owned(),
                format!("{}Function", pascal(r.operation_id)),
                kebab(r.operation_id),
            ]
        })
        .collect();
    expected.push(vec!["schedule".into(), "rate(15 minutes)".into(), "SweeperFunction".into(), "sweeper".into()]);
    expected.push(vec!["schedule".into(), "rate(1 minute)".into(), "WebhooksFunction".into(), "webhooks".into()]);
    assert_eq!(rows, expected, "README route map (method | path | function | binary)");
}

#[test]
fn helpers_name_things_as_the_template_does() {
    assert_eq!(kebab("createSession"), "create-session");
    assert_eq!(kebab("health"), "health");
    assert_eq!(pascal("sessionStats"), "SessionStats");
}
