//! deploy/kubernetes/ and the custom resources of deploy/: every manifest
//! validated offline.
//!
//! * Kubernetes' own kinds: `kubectl kustomize` renders each kustomization
//!   as `kubectl apply -k` would send it, and `kubernetes-validate --strict`
//!   (PyPI) checks the result against the published OpenAPI schemas of
//!   Kubernetes 1.30 (the oldest the manifests support: the preStop `sleep`
//!   action) and 1.37, unknown fields refused.
//! * Custom resources (ServiceMonitor, PrometheusRule, EnvoyFilter, Istio
//!   Gateway and VirtualService, Gateway API objects, EnvoyExtensionPolicy):
//!   `tests/support/crd_validate.py` against the OpenAPI schemas of their
//!   CRDs (tests/deploy_schemas/, see its README), unknown fields refused.
//! * Each tool is shown to refuse a broken manifest, and the manifests are
//!   checked against each other and against tollgate's config: ports,
//!   probes, the config directory, the grace period, the selectors.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tollgate_testkit::deploy::{
    crd_validate, kubernetes_validate, kustomize, repo_path, run, shipped_config_files, yaml_doc,
    yaml_docs,
};
use tollgate_testkit::scratch_dir;

const VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

fn rendered(dir: &str) -> (PathBuf, Vec<Value>) {
    let file = kustomize(dir);
    let docs = yaml_docs(file.to_str().expect("path"));
    (file, docs)
}

fn kind_name(d: &Value) -> String {
    format!(
        "{}/{}",
        d["kind"].as_str().unwrap_or_default().to_lowercase(),
        d["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// kubernetes-validate passes every document of `file` (each named in a
/// "passed" line) against every supported version.
fn assert_valid(file: &Path, docs: &[Value]) {
    for v in VERSIONS {
        let out = kubernetes_validate(file, v);
        assert!(
            out.success,
            "kubernetes-validate -k {v} {}:\n{}",
            file.display(),
            out.text
        );
        for d in docs {
            let line = format!("passed for resource {}", kind_name(d));
            assert!(
                out.text.contains(&line),
                "-k {v}: no `{line}`:\n{}",
                out.text
            );
        }
    }
}

#[test]
fn base_manifests_pass_kubernetes_schemas() {
    let (file, docs) = rendered("deploy/kubernetes");
    let kinds: Vec<String> = docs.iter().map(kind_name).collect();
    for expected in [
        "namespace/tollgate",
        "serviceaccount/tollgate",
        "configmap/tollgate-config",
        "secret/tollgate-redis",
        "deployment/tollgate",
        "service/tollgate",
        "service/tollgate-headless",
        "poddisruptionbudget/tollgate",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} not rendered: {kinds:?}"
        );
    }
    assert_valid(&file, &docs);
    // Everything lands in the tollgate namespace.
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(d["metadata"]["namespace"], "tollgate", "{}", kind_name(d));
    }
}

#[test]
fn monitoring_manifests_pass_their_schemas() {
    let (file, docs) = rendered("deploy/kubernetes/monitoring");
    let out = crd_validate(std::slice::from_ref(&file));
    assert!(out.success, "{}", out.text);
    for d in &docs {
        let line = if d["apiVersion"].as_str().is_some_and(|a| a.contains('.')) {
            "ok "
        } else {
            "builtin "
        };
        assert!(
            out.text.lines().any(|l| l.starts_with(line)
                && l.contains(&format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or("")
                ))),
            "{} not validated:\n{}",
            kind_name(d),
            out.text
        );
    }
    // The one built-in kind (the dashboard's ConfigMap) goes to kubernetes-validate.
    let builtin: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .cloned()
        .collect();
    assert_eq!(builtin.len(), 1);
    assert_eq!(builtin[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_valid(&file, &builtin);
}

#[test]
fn istio_and_envoy_gateway_resources_pass_their_crd_schemas() {
    let files: Vec<PathBuf> = [
        "deploy/istio/ingress-gateway.yaml",
        "deploy/istio/sidecar.yaml",
        "deploy/istio/gateway-routes.yaml",
        "deploy/envoy-gateway/gateway.yaml",
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
    ]
    .iter()
    .map(|f| repo_path(f))
    .collect();
    let out = crd_validate(&files);
    assert!(out.success, "{}", out.text);
    let docs: usize = files
        .iter()
        .map(|f| yaml_docs(f.to_str().expect("path")).len())
        .sum();
    assert_eq!(
        out.text.lines().filter(|l| l.starts_with("ok ")).count(),
        docs,
        "{}",
        out.text
    );
    // Every file under deploy/istio and deploy/envoy-gateway is one of these.
    for dir in ["deploy/istio", "deploy/envoy-gateway"] {
        for entry in std::fs::read_dir(repo_path(dir)).expect("dir").flatten() {
            assert!(
                files.contains(&entry.path()),
                "{} is not validated",
                entry.path().display()
            );
        }
    }
}

/// Both validators refuse what the API server would: an unknown field, a
/// value outside an enum.
#[test]
fn validators_refuse_broken_manifests() {
    let dir = scratch_dir("broken-manifests");
    let (file, _) = rendered("deploy/kubernetes");
    let text = std::fs::read_to_string(&file).expect("render");
    let broken = dir.join("broken.yaml");
    assert!(text.contains("readinessProbe:"));
    std::fs::write(&broken, text.replace("readinessProbe:", "readinesProbe:")).expect("write");
    let out = kubernetes_validate(&broken, "1.37.0");
    assert!(
        !out.success && out.text.contains("readinesProbe"),
        "{}",
        out.text
    );

    let policy =
        std::fs::read_to_string(repo_path("deploy/envoy-gateway/envoyextensionpolicy.yaml"))
            .expect("policy");
    let cases = [
        ("body: Buffered", "body: Bufered"),
        ("failOpen: false", "failOpen: false\n    failClosed: true"),
    ];
    for (from, to) in cases {
        let f = dir.join("policy.yaml");
        assert!(policy.contains(from));
        std::fs::write(&f, policy.replacen(from, to, 1)).expect("write");
        let out = crd_validate(&[f]);
        assert!(
            !out.success && out.text.contains("FAIL"),
            "{to}: accepted\n{}",
            out.text
        );
    }
    let ef = std::fs::read_to_string(repo_path("deploy/istio/sidecar.yaml")).expect("sidecar");
    let f = dir.join("envoyfilter.yaml");
    std::fs::write(
        &f,
        ef.replacen("operation: INSERT_BEFORE", "operation: INSERT_BEFOR", 1),
    )
    .expect("write");
    assert!(
        !crd_validate(&[f]).success,
        "an EnvoyFilter with an unknown operation was accepted"
    );
}

/// kustomization.yaml lists every manifest of its directory.
#[test]
fn kustomization_lists_every_manifest() {
    for dir in ["deploy/kubernetes", "deploy/kubernetes/monitoring"] {
        let k = yaml_doc(&format!("{dir}/kustomization.yaml"), "Kustomization");
        let listed: Vec<&str> = k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for entry in std::fs::read_dir(repo_path(dir)).expect("dir").flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(
                    listed.contains(&name.as_str()),
                    "{dir}/{name} is not in its kustomization"
                );
            }
        }
    }
}

fn deployment() -> Value {
    yaml_doc("deploy/kubernetes/deployment.yaml", "Deployment")
}

fn container() -> Value {
    deployment()["spec"]["template"]["spec"]["containers"][0].clone()
}

fn port_named(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
        .as_u64()
        .expect("port")
}

fn duration_secs(d: &str) -> u64 {
    d.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{d}`: whole seconds expected"))
}

/// The ConfigMap and the Secret, mounted as the Deployment mounts them
/// (one directory), pass `tollgate check`; their listeners are the
/// Deployment's container ports, on every interface.
#[test]
fn shipped_config_passes_tollgate_check() {
    let (config, store) = shipped_config_files();
    let dir = scratch_dir("shipped-config");
    std::fs::write(dir.join("tollgate.toml"), &config).expect("write");
    std::fs::write(dir.join("store.toml"), &store).expect("write");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["check", "--config"]).arg(&dir);
    let out = run(cmd);
    assert!(
        out.success,
        "tollgate check {}:\n{}",
        dir.display(),
        out.text
    );

    let v: toml::Value = toml::from_str(&config).expect("TOML");
    let c = container();
    assert_eq!(
        v["server"]["grpc_listen"].as_str(),
        Some(format!("0.0.0.0:{}", port_named(&c, "grpc")).as_str())
    );
    assert_eq!(
        v["server"]["admin_listen"].as_str(),
        Some(format!("0.0.0.0:{}", port_named(&c, "admin")).as_str())
    );
    assert!(v.get("store").is_none(), "[store] belongs in the Secret");
    let store: toml::Value = toml::from_str(&store).expect("TOML");
    assert_eq!(
        store["store"]["kind"].as_str(),
        Some("redis"),
        "two replicas share one Redis"
    );
}

/// SIGTERM → preStop pause, then tollgate drains for shutdown_grace: the
/// pod's grace period must hold both, or in-flight requests are killed.
#[test]
fn termination_grace_covers_the_drain() {
    let (config, _) = shipped_config_files();
    let v: toml::Value = toml::from_str(&config).expect("TOML");
    let grace = duration_secs(
        v["server"]["shutdown_grace"]
            .as_str()
            .expect("shutdown_grace"),
    );
    let d = deployment();
    let pod = &d["spec"]["template"]["spec"];
    let pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let period = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        period > pre_stop + grace,
        "{period}s <= preStop {pre_stop}s + shutdown_grace {grace}s"
    );
}

/// Probes, user, filesystem and the config directory agree with the image
/// and with tollgate.
#[test]
fn deployment_matches_image_and_tollgate() {
    let c = container();
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let pod = deployment()["spec"]["template"]["spec"].clone();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The image's USER and CMD.
    let dockerfile =
        std::fs::read_to_string(repo_path("deploy/image/Dockerfile")).expect("Dockerfile");
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert_eq!(
        user.trim(),
        format!(
            "{}:{}",
            pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
        )
    );
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Value = serde_json::from_str(cmd).expect("CMD as a JSON array");
    assert_eq!(c["args"], cmd, "the Deployment's args are the image's CMD");
    // --config names the directory the config volume is mounted at.
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "config")
        .expect("config mount")
        .clone();
    assert_eq!(c["args"][1], mount["mountPath"]);
    assert_eq!(mount["readOnly"], true);
    // ...and that volume holds the ConfigMap and the Secret.
    let vol = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "config")
        .expect("config volume")
        .clone();
    let sources = vol["projected"]["sources"]
        .as_array()
        .expect("projected sources");
    let cm = yaml_doc("deploy/kubernetes/configmap.yaml", "ConfigMap");
    let secret = yaml_doc("deploy/kubernetes/secret-redis.yaml", "Secret");
    assert_eq!(sources[0]["configMap"]["name"], cm["metadata"]["name"]);
    assert_eq!(sources[1]["secret"]["name"], secret["metadata"]["name"]);
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["requests"]["memory"].is_string()
    );
}

/// Services, the PDB and the ServiceMonitor select the Deployment's pods
/// and name ports that exist.
#[test]
fn selectors_and_ports_line_up() {
    let d = deployment();
    let labels = d["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels")
        .clone();
    let selects = |sel: &Value| {
        sel.as_object()
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let c = container();
    for file in [
        "deploy/kubernetes/service.yaml",
        "deploy/kubernetes/service-headless.yaml",
    ] {
        let svc = yaml_doc(file, "Service");
        assert!(selects(&svc["spec"]["selector"]), "{file}");
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            let target = p["targetPort"].as_str().expect("named targetPort");
            port_named(&c, target);
            if target == "grpc" {
                assert_eq!(
                    p["appProtocol"], "grpc",
                    "{file}: HTTP/2 for Istio and Envoy Gateway"
                );
            }
        }
    }
    assert_eq!(
        yaml_doc("deploy/kubernetes/service-headless.yaml", "Service")["spec"]["clusterIP"],
        "None"
    );
    let pdb = yaml_doc(
        "deploy/kubernetes/poddisruptionbudget.yaml",
        "PodDisruptionBudget",
    );
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
    assert!(
        d["spec"]["replicas"].as_u64().expect("replicas")
            > pdb["spec"]["maxUnavailable"]
                .as_u64()
                .expect("maxUnavailable")
    );
    let sm = yaml_doc(
        "deploy/kubernetes/monitoring/servicemonitor.yaml",
        "ServiceMonitor",
    );
    let svc = yaml_doc("deploy/kubernetes/service.yaml", "Service");
    let svc_labels = svc["metadata"]["labels"]
        .as_object()
        .expect("labels")
        .clone();
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "ServiceMonitor selects the Service"
        );
    }
    let port = sm["spec"]["endpoints"][0]["port"].as_str().expect("port");
    let admin = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == port)
        .expect("the ServiceMonitor's port on the Service");
    assert_eq!(admin["targetPort"], "admin");
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        port_named(&c, "admin").to_string()
    );
}
