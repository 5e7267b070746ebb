//! Random `--set` paths and values never panic: each is applied or refused with a message.

use lmlab::recipe;
use proptest::prelude::*;

fn base() -> recipe::Recipe {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/linear-regression.toml");
    recipe::load(&path).expect("the bundled recipe parses")
}

fn path_strategy() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "seed",
        "device",
        "description",
        "smoke",
        "task",
        "task.dim",
        "task.noise",
        "task.use",
        "task.kind",
        "objective.use",
        "scheduler.steps",
        "scheduler.optim.lr",
        "scheduler.optim",
        "scheduler.hidden",
        "scheduler.optim.schedule",
        "scheduler.optim.grad_clip_norm",
        "scheduler.batch_size",
    ])
    .prop_map(String::from);
    prop_oneof![known, "[a-z_.]{0,24}", "\\PC{0,16}"]
}

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("nan".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("cosine".to_string()),
        Just("tch:cuda:x".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_sets_never_panic(path in path_strategy(), value in value_strategy(), raw in "\\PC{0,30}") {
        let mut r = base();
        let _ = r.apply_set(&format!("{path}={value}"));
        let _ = r.apply_set(&raw);
        // Whatever was accepted still builds or is refused with a message.
        let device = lmlab::burn::tensor::Device::flex();
        if let Err(e) = r.build(&device) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
