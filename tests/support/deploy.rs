//! Helpers for the tests of `deploy/`: YAML read with a real YAML parser
//! (PyYAML in `.venv`, which kubernetes-validate brings), the tools that
//! check the files (promtool, kubectl's kustomize, kubernetes-validate,
//! `crd_validate.py`), and the Envoy bootstrap an Istio `EnvoyFilter`
//! amounts to, so that a test runs the shipped patches through a real
//! Envoy.

use crate::process::{find_tool, repo_root, scratch_dir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A command's exit status and its stdout and stderr together.
pub struct Output {
    pub success: bool,
    pub text: String,
}

/// Runs `cmd` to completion; panics only if it cannot be started.
pub fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Output {
        success: out.status.success(),
        text,
    }
}

/// `.venv/bin/python3` (or `$TOLLGATE_PYTHON`): the one with PyYAML and
/// jsonschema.
pub fn python() -> PathBuf {
    find_tool("python3", "TOLLGATE_PYTHON")
}

/// Every document of a YAML file, as JSON values (empty documents left
/// out). `path` is relative to the repository root unless absolute.
pub fn yaml_docs(path: &str) -> Vec<Value> {
    let file = repo_path(path);
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import json, sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
         json.dump(docs, sys.stdout)",
    ])
    .arg(&file);
    let out = run(cmd);
    assert!(
        out.success,
        "{}: not YAML (or PyYAML missing: run scripts/install-test-deps.sh)\n{}",
        file.display(),
        out.text
    );
    match serde_json::from_str(&out.text) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("{}: unexpected parse {other:?}", file.display()),
    }
}

/// The one document of `kind` in a YAML file (panics if there is not
/// exactly one).
pub fn yaml_doc(path: &str, kind: &str) -> Value {
    let mut docs: Vec<Value> = yaml_docs(path)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(docs.len(), 1, "{path}: expected one {kind}");
    docs.remove(0)
}

/// `path` under the repository root, unless absolute.
pub fn repo_path(path: &str) -> PathBuf {
    if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        repo_root().join(path)
    }
}

/// `kubectl kustomize DIR` written to a scratch file: the manifests as
/// `kubectl apply -k DIR` would send them. Panics with kustomize's error.
pub fn kustomize(dir: &str) -> PathBuf {
    let mut cmd = Command::new(find_tool("kubectl", "KUBECTL"));
    cmd.arg("kustomize").arg(repo_path(dir));
    let out = run(cmd);
    assert!(out.success, "kubectl kustomize {dir}:\n{}", out.text);
    let file = scratch_dir("kustomize").join("rendered.yaml");
    std::fs::write(&file, &out.text)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    file
}

/// `kubernetes-validate --strict -k VERSION FILE`: Kubernetes' own kinds
/// against that version's published OpenAPI schemas, unknown fields
/// refused.
pub fn kubernetes_validate(file: &Path, version: &str) -> Output {
    let mut cmd = Command::new(find_tool("kubernetes-validate", "KUBERNETES_VALIDATE"));
    cmd.args(["--strict", "-k", version]).arg(file);
    run(cmd)
}

/// `tests/support/crd_validate.py tests/deploy_schemas FILES...`: custom
/// resources against the OpenAPI schemas of their CRDs.
pub fn crd_validate(files: &[PathBuf]) -> Output {
    let root = repo_root();
    let mut cmd = Command::new(python());
    cmd.arg(root.join("tests/support/crd_validate.py"))
        .arg(root.join("tests/deploy_schemas"))
        .args(files);
    run(cmd)
}

/// `promtool ARGS...` in `dir`.
pub fn promtool(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(find_tool("promtool", "PROMTOOL"));
    cmd.current_dir(dir).args(args);
    run(cmd)
}

/// Proto-style merge, as Istio's `MERGE` applies a patch: objects merge
/// field by field, lists are appended to, anything else is replaced.
pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (slot, v) => *slot = v.clone(),
    }
}

/// Every `envoy_grpc.cluster_name` in a config fragment.
pub fn grpc_clusters(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(v, &mut |node| {
        if let Some(name) = node
            .get("envoy_grpc")
            .and_then(|g| g.get("cluster_name"))
            .and_then(Value::as_str)
        {
            out.push(name.to_string());
        }
    });
    out
}

fn walk(v: &Value, f: &mut impl FnMut(&Value)) {
    f(v);
    match v {
        Value::Object(m) => m.values().for_each(|x| walk(x, f)),
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// One route of the Envoy route table a test builds: its name (what an
/// `HTTP_ROUTE` patch matches), path prefix, upstream cluster and timeout.
pub struct RouteSpec {
    pub name: String,
    pub prefix: String,
    pub cluster: String,
    pub timeout: String,
}

/// A static Envoy bootstrap around one HTTP connection manager: listener
/// `ingress` on 127.0.0.1:0, admin on 127.0.0.1:0, the given HTTP filters
/// (the router last), one virtual host, and STATIC clusters on loopback:
/// `http2` clusters (gRPC services) get HTTP/2. Written to a scratch file;
/// returns its path for [`crate::Envoy::start`].
pub fn bootstrap(
    http_filters: Vec<Value>,
    vhost: Value,
    clusters: &[(&str, u16, bool)],
    name: &str,
) -> String {
    let clusters: Vec<Value> = clusters
        .iter()
        .map(|(cluster, port, http2)| {
            let mut c = json!({
                "name": cluster,
                "connect_timeout": "1s",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": cluster,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
                }
            });
            if *http2 {
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                });
            }
            c
        })
        .collect();
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"name": "routes", "virtual_hosts": [vhost]},
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    });
    let file = scratch_dir(name).join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&config).expect("json");
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    file.display().to_string()
}

/// The router filter, last in every chain.
pub fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// A virtual host matching every domain, with these routes.
pub fn vhost(name: &str, routes: &[RouteSpec]) -> Value {
    let routes: Vec<Value> = routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "match": {"prefix": r.prefix},
                "route": {"cluster": r.cluster, "timeout": r.timeout}
            })
        })
        .collect();
    json!({"name": name, "domains": ["*"], "routes": routes})
}

/// Applies the `configPatches` of an Istio `EnvoyFilter` to an HTTP
/// filter chain and a virtual host, as istiod would to the listener and
/// route configuration it generates: `HTTP_FILTER` with `INSERT_BEFORE`,
/// `INSERT_AFTER` or `INSERT_FIRST` relative to the matched sub-filter;
/// `VIRTUAL_HOST` and `HTTP_ROUTE` with `MERGE` on the matched names.
/// Every patch must match `context`; any other operation or target
/// panics, so a patch this does not understand fails the test instead of
/// being skipped. Returns the filter chain.
pub fn apply_envoy_filter(envoy_filter: &Value, context: &str, vhost: &mut Value) -> Vec<Value> {
    let patches = envoy_filter["spec"]["configPatches"]
        .as_array()
        .expect("spec.configPatches");
    let mut filters = vec![router_filter()];
    for (i, p) in patches.iter().enumerate() {
        let m = &p["match"];
        assert_eq!(m["context"], context, "patch {i}: context");
        let op = p["patch"]["operation"].as_str().unwrap_or_default();
        let value = &p["patch"]["value"];
        match p["applyTo"].as_str().unwrap_or_default() {
            "HTTP_FILTER" => {
                let f = &m["listener"]["filterChain"]["filter"];
                assert_eq!(
                    f["name"], "envoy.filters.network.http_connection_manager",
                    "patch {i}: HTTP filters live in the HTTP connection manager"
                );
                let anchor = f["subFilter"]["name"].as_str().unwrap_or_default();
                let at = filters.iter().position(|x| x["name"] == anchor);
                match (op, at) {
                    ("INSERT_BEFORE", Some(at)) => filters.insert(at, value.clone()),
                    ("INSERT_AFTER", Some(at)) => filters.insert(at + 1, value.clone()),
                    ("INSERT_FIRST", _) => filters.insert(0, value.clone()),
                    _ => panic!("patch {i}: {op} relative to `{anchor}` not understood"),
                }
            }
            "VIRTUAL_HOST" => {
                assert_eq!(op, "MERGE", "patch {i}");
                assert_eq!(
                    m["routeConfiguration"]["vhost"]["name"], vhost["name"],
                    "patch {i}: virtual host name"
                );
                merge(vhost, value);
            }
            "HTTP_ROUTE" => {
                assert_eq!(op, "MERGE", "patch {i}");
                let v = &m["routeConfiguration"]["vhost"];
                assert_eq!(v["name"], vhost["name"], "patch {i}: virtual host name");
                let route = v["route"]["name"].as_str().expect("route name");
                let routes = vhost["routes"].as_array_mut().expect("routes");
                let r = routes
                    .iter_mut()
                    .find(|r| r["name"] == route)
                    .unwrap_or_else(|| panic!("patch {i}: no route named {route}"));
                merge(r, value);
            }
            other => panic!("patch {i}: applyTo {other} not understood"),
        }
    }
    filters
}

/// The config the Kubernetes manifests ship, as one TOML text for
/// [`crate::Tollgate::start`]: the ConfigMap's `tollgate.toml` and the
/// Secret's `store.toml` (deploy/kubernetes/), with the listeners moved to
/// `127.0.0.1:0`, the Redis URL pointed at `redis_url`, and the Redis
/// `timeout` raised from the shipped 50 ms to 2 s: on a loaded 2-core test
/// machine a debug build's store calls can take longer than 50 ms, which
/// would answer them by `on_error` instead. Nothing else is changed, so
/// the tests run the shipped rules and quotas.
pub fn shipped_config(redis_url: &str) -> String {
    let (config, store) = shipped_config_files();
    let config = replace_line(&config, "grpc_listen", "grpc_listen = \"127.0.0.1:0\"");
    let config = replace_line(&config, "admin_listen", "admin_listen = \"127.0.0.1:0\"");
    let store = replace_line(&store, "url", &format!("url = \"{redis_url}\""));
    let store = replace_line(&store, "timeout", "timeout = \"2s\"");
    format!("{config}\n{store}")
}

/// The ConfigMap's `tollgate.toml` and the Secret's `store.toml`, as
/// shipped.
pub fn shipped_config_files() -> (String, String) {
    let cm = yaml_doc("deploy/kubernetes/configmap.yaml", "ConfigMap");
    let secret = yaml_doc("deploy/kubernetes/secret-redis.yaml", "Secret");
    let config = cm["data"]["tollgate.toml"]
        .as_str()
        .expect("ConfigMap data tollgate.toml")
        .to_string();
    let store = secret["stringData"]["store.toml"]
        .as_str()
        .expect("Secret stringData store.toml")
        .to_string();
    (config, store)
}

/// `text` with the one line that starts with `key` (then spaces and `=`)
/// replaced by `line`; panics unless exactly one line matched.
pub fn replace_line(text: &str, key: &str, line: &str) -> String {
    let mut hits = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let is_key = l
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='));
            if is_key {
                hits += 1;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(hits, 1, "expected one `{key} =` line in:\n{text}");
    out.join("\n") + "\n"
}

/// The name of the cluster Istio makes for the tollgate Service's gRPC
/// port: `outbound|<port>||<name>.<namespace>.svc.cluster.local`, from
/// deploy/kubernetes/service.yaml and the kustomization's namespace.
pub fn istio_tollgate_cluster() -> String {
    let svc = yaml_doc("deploy/kubernetes/service.yaml", "Service");
    let ns = yaml_doc("deploy/kubernetes/kustomization.yaml", "Kustomization")["namespace"]
        .as_str()
        .expect("kustomization namespace")
        .to_string();
    let port = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a port named grpc")["port"]
        .as_u64()
        .expect("port number");
    let name = svc["metadata"]["name"].as_str().expect("name");
    format!("outbound|{port}||{name}.{ns}.svc.cluster.local")
}

/// The routes of the VirtualService in deploy/istio/gateway-routes.yaml,
/// named as Istio names them (the http route's name), every destination
/// on the cluster `upstream`.
pub fn istio_gateway_routes() -> Vec<RouteSpec> {
    let vs = yaml_doc("deploy/istio/gateway-routes.yaml", "VirtualService");
    vs["spec"]["http"]
        .as_array()
        .expect("http routes")
        .iter()
        .map(|h| RouteSpec {
            name: h["name"]
                .as_str()
                .expect("every route is named")
                .to_string(),
            prefix: h["match"][0]["uri"]["prefix"]
                .as_str()
                .unwrap_or("/")
                .to_string(),
            cluster: "upstream".into(),
            timeout: h["timeout"].as_str().unwrap_or("15s").to_string(),
        })
        .collect()
}

/// The Envoy bootstrap of an Istio EnvoyFilter file: its patches applied
/// to `routes` in virtual host `vhost_name` (see [`apply_envoy_filter`]),
/// the tollgate cluster under the name Istio gives the Service's gRPC port
/// ([`istio_tollgate_cluster`], HTTP/2 to `tollgate_port`) and each route's
/// cluster on `upstream_port`. Returns the file and the filter names in
/// order.
pub fn istio_bootstrap(
    file: &str,
    context: &str,
    vhost_name: &str,
    routes: &[RouteSpec],
    tollgate_port: u16,
    upstream_port: u16,
) -> (String, Vec<String>) {
    let envoy_filter = yaml_doc(file, "EnvoyFilter");
    let mut vh = vhost(vhost_name, routes);
    let filters = apply_envoy_filter(&envoy_filter, context, &mut vh);
    let names = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let cluster = istio_tollgate_cluster();
    for called in grpc_clusters(&Value::Array(filters.clone())) {
        assert_eq!(
            called, cluster,
            "{file}: the filters call the tollgate Service"
        );
    }
    let mut clusters: Vec<(&str, u16, bool)> = vec![(cluster.as_str(), tollgate_port, true)];
    for r in routes {
        if !clusters.iter().any(|c| c.0 == r.cluster) {
            clusters.push((r.cluster.as_str(), upstream_port, false));
        }
    }
    (bootstrap(filters, vh, &clusters, "istio"), names)
}
