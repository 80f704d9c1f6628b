//! Loading without fixtures: random models written here, the hub cache layout,
//! and the errors a user meets with broken inputs.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sparselab::hub::HubOptions;
use sparselab::model::random::{llama_config, opt_config, write_random_model};
use sparselab::model::{LoadOptions, Model};

fn opts_offline(cache: &Path) -> LoadOptions {
    LoadOptions {
        hub: HubOptions {
            cache_dir: cache.to_path_buf(),
            offline: true,
            endpoint: None,
        },
        ..LoadOptions::default()
    }
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir.to_str().unwrap(), &opts_offline(dir)) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn run(model: &Model) -> Tensor {
    let ids = Tensor::new(&[[1u32, 5, 9, 3, 7, 2]], &Device::Cpu).unwrap();
    model.forward(&ids).unwrap()
}

#[test]
fn random_opt_and_llama_load_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, cfg) in [
        ("opt", opt_config(64, 32, 2, 4, 64, 16)),
        ("llama", llama_config(64, 32, 2, 4, 2, 48, 16)),
    ] {
        let dir = tmp.path().join(name);
        write_random_model(&dir, &cfg, DType::F32, 7).unwrap();
        let model = Model::load(dir.to_str().unwrap(), &opts_offline(tmp.path())).unwrap();
        assert_eq!(model.num_layers(), 2);
        let logits = run(&model);
        assert_eq!(logits.dims(), &[1, 6, 64]);
        let finite = logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "{name} produced non-finite logits");
        // Stage by stage equals all at once.
        let ids = Tensor::new(&[[1u32, 5, 9, 3, 7, 2]], &Device::Cpu).unwrap();
        let mut h = model.embed(&ids).unwrap();
        for l in 0..model.num_layers() {
            h = model.layer(l).unwrap().forward(&h).unwrap();
        }
        let staged = model.head(&h).unwrap();
        let d = (staged - &logits)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        assert!(model
            .tokenizer()
            .err()
            .unwrap()
            .to_string()
            .contains("no tokenizer"));
    }
}

#[test]
fn hub_cache_layout_resolves_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--acme--tiny-opt");
    let snap = repo.join("snapshots/0123456789abcdef");
    write_random_model(&snap, &opt_config(64, 32, 1, 4, 64, 16), DType::F32, 1).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    let model = Model::load("acme/tiny-opt", &opts_offline(&cache)).unwrap();
    assert_eq!(model.dir, snap);
    // A pinned revision that is in the cache, and one that is not.
    assert!(Model::load("acme/tiny-opt@0123456789abcdef", &opts_offline(&cache)).is_ok());
    let err = format!(
        "{:#}",
        Model::load("acme/tiny-opt@v9", &opts_offline(&cache))
            .err()
            .unwrap()
    );
    assert!(
        err.contains("not in the hub cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn missing_directory_is_named() {
    let err = load_err(Path::new("/nonexistent/model/dir"));
    assert!(
        err.contains("/nonexistent/model/dir") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key_and_the_supported_types() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_random_model(&dir, &opt_config(64, 32, 1, 4, 64, 16), DType::F32, 1).unwrap();
    let mut cfg = opt_config(64, 32, 1, 4, 64, 16);
    cfg.as_object_mut().unwrap().remove("ffn_dim");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("ffn_dim") && err.contains("config.json"),
        "{err}"
    );

    cfg["model_type"] = "bloom".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("bloom") && err.contains("opt, llama"), "{err}");
}

#[test]
fn truncated_safetensors_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_random_model(&dir, &opt_config(64, 32, 1, 4, 64, 16), DType::F32, 1).unwrap();
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("safetensors"), "{err}");
}

#[test]
fn wrong_shape_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_random_model(&dir, &opt_config(64, 32, 1, 4, 64, 16), DType::F32, 1).unwrap();
    // Same checkpoint, but the config now claims a wider MLP.
    std::fs::write(
        dir.join("config.json"),
        opt_config(64, 32, 1, 4, 80, 16).to_string(),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("fc1.weight") && err.contains("[64, 32]") && err.contains("[80, 32]"),
        "{err}"
    );
}

#[test]
fn missing_weights_and_shards_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_random_model(&dir, &opt_config(64, 32, 1, 4, 64, 16), DType::F32, 1).unwrap();
    std::fs::rename(
        dir.join("model.safetensors"),
        dir.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("missing"),
        "{err}"
    );
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("no weights"), "{err}");
}
