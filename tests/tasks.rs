//! Real task data: GSM8K read from the shared data folder, its answers parsed and checked.

mod common;

use common::data_dir;
use lmlab::tasks::gsm8k::{Gsm8k, Gsm8kConfig};
use lmlab::{Split, Task};

#[test]
fn gsm8k_loads_with_exact_answers() {
    let Some(data) = data_dir("gsm8k/test.jsonl") else {
        return;
    };
    let task = Gsm8k::new(Gsm8kConfig {
        dir: Some(data.join("gsm8k")),
        limit: None,
    });
    let test = task.problems(Split::Test).unwrap();
    assert_eq!(test.len(), 1319);
    let train = task.problems(Split::Train).unwrap();
    let validation = task.problems(Split::Validation).unwrap();
    assert_eq!(train.len() + validation.len(), 7473);
    assert_eq!(validation.len(), 500);
    for p in test.iter().chain(&train) {
        assert!(p.answer.parse::<f64>().is_ok(), "{}: {}", p.id, p.answer);
        assert!(
            task.check(p, &p.solution),
            "the reference solution solves {}",
            p.id
        );
        assert!(!task.check(p, "#### 123456789"));
    }
    // `#### 1,234`-style answers lose their separators.
    assert!(train.iter().any(
        |p| p.solution.contains(',') && p.solution.rsplit("####").next().unwrap().contains(',')
    ));
}
