//! The plugin's task used statically (the runner's tests load the same code as a cdylib).

use lmlab_plugin_dynamic_example::SumConfig;
use lmlab_sdk::Split;
use lmlab_sdk::registry::{self, Kind};

#[test]
fn targets_are_sums_and_the_task_is_registered() {
    assert!(registry::find(Kind::Task, "sum-regression").is_some());
    let _ = SumConfig::default();
    let factory = registry::find(Kind::Task, "sum-regression").unwrap();
    let device = lmlab_sdk::burn::tensor::Device::flex();
    let ctx = registry::BuildContext {
        device: &device,
        seed: 1,
        role: "task",
    };
    let built = (factory.build)(&Default::default(), &ctx).unwrap();
    let task: Box<lmlab_sdk::components::regression::RegressionTask> =
        built.downcast().ok().unwrap();
    for p in task.problems(Split::Test).unwrap() {
        assert!((p.x.iter().sum::<f32>() - p.y).abs() < 1e-6);
        assert!(task.check(&p, &p.y));
    }
}
