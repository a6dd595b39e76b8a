//! deploy/: the Kubernetes manifests and the compose file parse (PyYAML, the interpreter the
//! fleet tests use), carry the fleet design (probes, GPU scheduling, HPA, config, secrets), their
//! config is valid for upres's strict loader, and the Dockerfiles only name files that exist.
//! No image is built here: the machines have no docker engine.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde_json::Value;
use upres::config::{Config, Overrides};

use crate::process::ChildServer;
use crate::support::python;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document in `path`, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = std::process::Command::new(python())
        .args(["-c", "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn k8s_objects() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files.iter().flat_map(|f| yaml_docs(f)).filter(|d| !d.is_null()).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_manifests_parse_and_carry_the_fleet_design() {
    let objects = k8s_objects();
    for o in &objects {
        assert!(o["apiVersion"].is_string() && o["kind"].is_string() && o["metadata"]["name"].is_string(), "{o}");
    }
    let cpu = find(&objects, "Deployment", "upres");
    let gpu = find(&objects, "Deployment", "upres-gpu");
    // `kubectl apply -f deploy/k8s/` must never replace the real signing key with a placeholder:
    // no Secret is applied from here; deploy/README.md creates it once, with every key the pods read.
    assert!(!objects.iter().any(|o| o["kind"] == "Secret"), "a Secret in deploy/k8s/ would overwrite the real one on apply");
    let (secret_name, secret_keys) = documented_secret();
    for d in [cpu, gpu] {
        let pod = &d["spec"]["template"];
        let labels = pod["metadata"]["labels"].as_object().unwrap();
        for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(labels.get(k), Some(v), "the selector matches the pod labels");
        }
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        // No service-link variables (UPRES_SERVICE_HOST, UPRES_PORT_8080_TCP…) in the pods.
        assert_eq!(pod["spec"]["enableServiceLinks"], false);
        // The ServiceAccount the pods run as is shipped.
        let account = pod["spec"]["serviceAccountName"].as_str().expect("serviceAccountName");
        find(&objects, "ServiceAccount", account);
        let mut secret_refs = 0;
        for env in c["env"].as_array().unwrap() {
            if let Some(r) = env["valueFrom"]["secretKeyRef"].as_object() {
                assert_eq!(r["name"], secret_name.as_str());
                assert!(secret_keys.iter().any(|k| r["key"] == k.as_str()), "secret key {r:?} is not created by {secret_keys:?}");
                secret_refs += 1;
            }
        }
        assert_eq!(secret_refs, 2, "UPRES_KEY and UPRES_SALT come from the Secret");
        let config_volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "config").unwrap();
        assert_eq!(config_volume["configMap"]["name"], "upres-config");
    }
    let gpu_pod = &gpu["spec"]["template"]["spec"];
    assert_eq!(gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert!(!gpu_pod["nodeSelector"].as_object().unwrap().is_empty());
    assert_eq!(gpu_pod["tolerations"][0]["key"], "nvidia.com/gpu");

    // The Service selects both Deployments' pods; the HPA scales the CPU one.
    let service = find(&objects, "Service", "upres");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        for d in [cpu, gpu] {
            assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k], v);
        }
    }
    let hpa = find(&objects, "HorizontalPodAutoscaler", "upres");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "upres");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    let ingress = find(&objects, "Ingress", "upres");
    assert_eq!(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"], "$request_uri");

    // The ConfigMap's upres.toml goes through the same strict loader as a file.
    let toml = find(&objects, "ConfigMap", "upres-config")["data"]["upres.toml"].as_str().unwrap().to_string();
    let cfg: Config = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(&toml)).extract().unwrap();
    cfg.validate().unwrap();
    upres::guard::validate(&cfg).unwrap();
    assert!(cfg.cache.store.url.starts_with("s3://") && cfg.cache.claims.enabled);
    // Rate limits believe the one header the proxy in front overwrites, and only from it.
    assert!(!cfg.server.trusted_proxies.is_empty());
    assert_eq!(cfg.server.client_ip_header, "x-real-ip");
}

/// deploy/nginx.conf overwrites the one header upres is told to believe with the peer address.
#[test]
fn nginx_sets_the_client_ip_header_upres_trusts() {
    let conf = std::fs::read_to_string(repo().join("deploy/nginx.conf")).unwrap();
    let set: Vec<String> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("proxy_set_header "))
        .filter(|l| l.contains("$remote_addr") || l.contains("$proxy_add_x_forwarded_for"))
        .map(|l| l.split_whitespace().next().unwrap().to_ascii_lowercase())
        .collect();
    assert_eq!(set, ["x-real-ip"], "nginx writes exactly one client-address header");
    assert!(conf.contains("client_ip_header = \"x-real-ip\""), "nginx.conf says which upres setting goes with it");
}

/// The `kubectl create secret generic NAME --from-literal=KEY=…` command in deploy/README.md:
/// its name and keys.
fn documented_secret() -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    let joined = readme.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with("kubectl create secret generic"))
        .expect("deploy/README.md shows `kubectl create secret generic …`");
    let words: Vec<&str> = line.split_whitespace().collect();
    let name = words[4].to_string();
    let keys: Vec<String> = words
        .iter()
        .filter_map(|w| w.strip_prefix("--from-literal="))
        .map(|kv| kv.split_once('=').expect("--from-literal=KEY=VALUE").0.to_string())
        .collect();
    assert!(!keys.is_empty(), "{line}");
    (name, keys)
}

#[test]
fn compose_runs_two_replicas_on_an_s3_store_with_a_valid_environment() {
    let compose = yaml_docs(&repo().join("deploy/compose.yaml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    for name in ["minio", "bucket", "redis", "upres-a", "upres-b"] {
        assert!(services.contains_key(name), "service {name}");
    }
    assert!(services["bucket"]["command"][0].as_str().unwrap().contains("mc mb"));
    let env = services["upres-a"]["environment"].as_object().unwrap().clone();
    assert_eq!(services["upres-b"]["environment"].as_object().unwrap(), &env);
    // Every UPRES_* variable is a real config key (the env overlay is as strict as the file).
    figment::Jail::expect_with(|jail| {
        for (k, v) in &env {
            jail.set_env(k, v.as_str().unwrap());
        }
        let cfg = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(cfg.cache.store.url, "s3://upres-results");
        assert_eq!(cfg.cache.store.options["aws_endpoint"], "http://minio:9000");
        assert_eq!(cfg.rate_limit.backend, "redis://redis:6379/0");
        Ok(())
    });
}

#[test]
fn dockerfiles_only_name_files_and_features_that_exist() {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for (file, feature) in [("deploy/Dockerfile", None), ("deploy/Dockerfile.cuda", Some("cuda"))] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(text.contains("cargo build --release --locked"), "{file}");
        assert!(text.contains("scripts/fetch-models.sh"), "{file} fetches the weights like a developer");
        assert!(text.contains("USER 10001"), "{file} runs as non-root");
        assert_eq!(text.matches("\nFROM ").count(), 2, "{file} is multi-stage");
        let instructions = text.lines().filter(|l| !l.trim_start().starts_with('#'));
        for word in instructions.flat_map(str::split_whitespace) {
            let word = word.trim_matches(|c: char| c == '"' || c == ',' || c == '[' || c == ']');
            if word.starts_with("scripts/") || word.starts_with("config/") {
                assert!(repo().join(word).exists(), "{file} names {word}, which is not in the repo");
            }
        }
        if let Some(f) = feature {
            assert!(text.contains(&format!("--features {f}")));
            assert!(cargo.contains(&format!("\n{f} = [")), "feature {f} in Cargo.toml");
        }
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"), "the build context leaves target/ out");
}

/// What the kubelet injects into every pod for a Service named `upres` (with
/// `enableServiceLinks` on, the default).
const SERVICE_LINKS: [(&str, &str); 8] = [
    ("UPRES_SERVICE_HOST", "10.0.0.1"),
    ("UPRES_SERVICE_PORT", "8080"),
    ("UPRES_SERVICE_PORT_HTTP", "8080"),
    ("UPRES_PORT", "tcp://10.0.0.1:8080"),
    ("UPRES_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
    ("UPRES_PORT_8080_TCP_PROTO", "tcp"),
    ("UPRES_PORT_8080_TCP_PORT", "8080"),
    ("UPRES_PORT_8080_TCP_ADDR", "10.0.0.1"),
];

/// The real binary, started the way a pod starts it: with the service-link variables and the
/// kernel switches' env aliases set, it serves; a misspelt config key still stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_starts_with_service_link_and_alias_variables() {
    let origin = tempfile::tempdir().unwrap();
    std::fs::write(origin.path().join("a.png"), crate::support::png(8, 6)).unwrap();
    let start = |env: Vec<(&'static str, &'static str)>| {
        let dir = origin.path().to_path_buf();
        tokio::task::spawn_blocking(move || ChildServer::start(&dir, &env))
    };
    let mut env = SERVICE_LINKS.to_vec();
    // The kernel switches (portable runs on every CPU) and a nested key.
    env.extend([
        ("UPRES_FASTCONV", "portable"),
        ("UPRES_FASTCONV_WINOGRAD", "off"),
        ("UPRES_CPU_HIDE", "amx,avx512bf16"),
        ("UPRES_SERVER__MAX_CONNECTIONS", "64"),
    ]);
    let server = start(env).await.unwrap().unwrap_or_else(|f| panic!("the server did not start: {f:?}"));
    let client = crate::support::client();
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    let r = client.get(server.url("/x2/model=lanczos/format=png/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(crate::support::dimensions(&r.bytes().await.unwrap()), (16, 12));
    let log = server.log();
    assert!(log.contains("UPRES_SERVICE_HOST") && log.contains("UPRES_PORT_8080_TCP_ADDR"), "the ignored names are logged once:\n{log}");
    // The aliases reached the kernel selector: every role runs the forced portable kernel.
    assert!(log.contains("GAN trunk portable, RRDBNet trunk portable, image-facing portable, fp32 portable"), "{log}");
    assert!(log.contains("hidden: amx,avx512bf16"), "{log}");
    drop(server);

    // A forced backend this CPU cannot run (its feature hidden) stops the start, naming it.
    let mut env = SERVICE_LINKS.to_vec();
    env.extend([("UPRES_FASTCONV", "avx512"), ("UPRES_CPU_HIDE", "avx512")]);
    let failed = match start(env).await.unwrap() {
        Ok(s) => panic!("started at {} with a backend it cannot run", s.addr),
        Err(f) => f,
    };
    assert!(failed.log.contains("kernels.backend"), "{}", failed.log);

    // Inside a section the config stays strict: a misspelt key is a clear startup error.
    let mut env = SERVICE_LINKS.to_vec();
    env.push(("UPRES_SERVER__MAX_CONECTIONS", "64"));
    let failed = match start(env).await.unwrap() {
        Ok(s) => panic!("started at {} with a misspelt key", s.addr),
        Err(f) => f,
    };
    assert!(failed.exit.is_some_and(|e| !e.success()), "{failed:?}");
    assert!(failed.log.contains("max_conections"), "the error names the key:\n{}", failed.log);
}
