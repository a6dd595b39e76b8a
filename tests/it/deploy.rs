//! deploy/: the Kubernetes manifests and the compose file parse (PyYAML, the interpreter the
//! fleet tests use), carry the fleet design (probes, GPU scheduling, HPA, config, secrets), their
//! config is valid for upres's strict loader, and the Dockerfiles only name files that exist.
//! No image is built here: the machines have no docker engine.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde_json::Value;
use upres::config::{Config, Overrides};

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
    let secret = find(&objects, "Secret", "upres-signing");
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
        for env in c["env"].as_array().unwrap() {
            if let Some(r) = env["valueFrom"]["secretKeyRef"].as_object() {
                assert_eq!(r["name"], secret["metadata"]["name"]);
                assert!(secret["stringData"][r["key"].as_str().unwrap()].is_string(), "secret key {r:?}");
            }
        }
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
    assert!(cfg.cache.store.url.starts_with("s3://") && cfg.cache.claims.enabled);
}

#[test]
fn compose_runs_two_replicas_on_an_s3_store_with_a_valid_environment() {
    let compose = yaml_docs(&repo().join("deploy/compose.yaml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    for name in ["minio", "bucket", "upres-a", "upres-b"] {
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
