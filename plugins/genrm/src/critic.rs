//! Rationales generated in code: every step of a candidate solution is re-executed against the
//! problem and judged right or wrong, and the rationale ends with the verdict. This stands in
//! for the paper's reference-guided grading by a larger model. Three tasks are read: the
//! plugin's `last-letter` and `word-sort`, and the SDK's `arith` (re-executed by
//! [`lmlab_sdk::tasks::arith::step_checks`]).
//!
//! A step is re-executed on the candidate's own earlier results (an error is not counted
//! twice): the concatenation is checked against the letters the candidate wrote, an insertion
//! against the list it had, an equation's left operand against its previous result.

use lmlab_sdk::tasks::TextProblem;
use lmlab_sdk::tasks::arith::step_checks;
pub use lmlab_sdk::tasks::steps::StepCheck;
use lmlab_sdk::tasks::steps::{all_right, answer_check};

use crate::format::verdict;
use crate::tasks::{Kind, final_answer, insert_sorted, last_letter, problem_words};

fn ok(says: String) -> StepCheck {
    StepCheck::ok(says)
}

fn wrong(says: String) -> StepCheck {
    StepCheck::wrong(says)
}

/// The text between the first two double quotes after `prefix` at the start of `line`, and
/// the rest of the line after the closing quote.
fn quoted<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    line.strip_prefix(prefix)?.split_once('"')
}

/// The steps of `solution` for `problem`, re-executed; `None` when the problem is of no task
/// this module reads.
pub fn critique(problem: &TextProblem, solution: &str) -> Option<Vec<StepCheck>> {
    if let Some(words) = problem_words(Kind::LastLetter, &problem.prompt) {
        Some(last_letter_steps(&words, solution))
    } else if let Some(words) = problem_words(Kind::WordSort, &problem.prompt) {
        Some(word_sort_steps(&words, solution))
    } else {
        step_checks(problem, solution)
    }
}

/// The rationale of the checks, one line per step (`"apple" ends with "e". Correct.` /
/// `… Wrong.`, without step numbers or counts, so that a longer solution asks for no number
/// the verifier has not seen) up to the first wrong one, where the verdict is decided, and
/// that verdict: every step right (and at least one step).
pub fn rationale(checks: &[StepCheck]) -> (String, bool) {
    let upto = checks
        .iter()
        .position(|c| !c.right)
        .map_or(checks.len(), |i| i + 1);
    let mut s = String::new();
    for c in &checks[..upto] {
        let mark = if c.right { "Correct" } else { "Wrong" };
        let mut says = c.says.chars();
        let first = says.next().map(|f| f.to_uppercase().collect::<String>());
        s += &format!("{}{}. {mark}.\n", first.unwrap_or_default(), says.as_str());
    }
    (s, all_right(checks))
}

/// GenRM-CoT's training target for a candidate labelled `correct`: the rationale and the
/// verdict `I Yes|No`, or `None` when the re-executed verdict disagrees with the label (the
/// paper keeps only rationales whose verdict matches) or the problem cannot be read.
pub fn cot_target(problem: &TextProblem, solution: &str, correct: bool) -> Option<String> {
    let (text, verdict_yes) = rationale(&critique(problem, solution)?);
    (verdict_yes == correct).then(|| format!("{text}{}", verdict(correct)))
}

fn last_letter_steps(words: &[String], solution: &str) -> Vec<StepCheck> {
    let (mut out, mut letters, mut joined): (Vec<StepCheck>, Vec<String>, Option<String>) =
        Default::default();
    let mut answered = false;
    for line in solution.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((w, rest)) = quoted(line, "The last letter of \"") {
            let x = quoted(rest, " is \"").map_or("", |(x, _)| x);
            let i = letters.len();
            letters.push(x.to_string());
            out.push(match words.get(i) {
                None => wrong(format!("there is no word left for \"{w}\"")),
                Some(e) if e != w => wrong(format!("the next word is \"{e}\", not \"{w}\"")),
                Some(_) if last_letter(w) != x => wrong(format!(
                    "\"{w}\" ends with \"{}\", not \"{x}\"",
                    last_letter(w)
                )),
                Some(_) => ok(format!("\"{w}\" ends with \"{x}\"")),
            });
        } else if let Some((s, _)) = quoted(line, "Concatenating them is \"") {
            let want: String = letters.concat();
            out.push(if let Some(missed) = words.get(letters.len()) {
                wrong(format!("\"{missed}\" has no letter yet"))
            } else if letters.len() > words.len() {
                wrong("there are more letters than words".into())
            } else if s != want {
                wrong(format!("joining the letters gives \"{want}\", not \"{s}\""))
            } else {
                ok(format!("joining the letters gives \"{s}\""))
            });
            joined = Some(s.to_string());
        } else if line.starts_with("The answer is ") {
            let a = final_answer(line);
            out.push(answer_check(
                a,
                joined.as_deref(),
                "the letters were not joined",
            ));
            answered = true;
        } else {
            out.push(wrong(format!("\"{line}\" is not a step")));
        }
    }
    if !answered {
        out.push(wrong("there is no final answer after the steps".into()));
    }
    out
}

fn word_sort_steps(words: &[String], solution: &str) -> Vec<StepCheck> {
    let (mut out, mut list): (Vec<StepCheck>, Option<Vec<String>>) = Default::default();
    let mut placed = 0usize;
    let mut answered = false;
    for line in solution.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((w, _)) = quoted(line, "Start with \"") {
            out.push(if list.is_some() {
                wrong("the list was already started".into())
            } else if w != words[0] {
                wrong(format!("the first word is \"{}\", not \"{w}\"", words[0]))
            } else {
                ok(format!("start with \"{w}\""))
            });
            list = Some(vec![w.to_string()]);
            placed = 1;
        } else if let Some((w, rest)) = quoted(line, "Insert \"") {
            let got: Vec<String> = rest
                .trim_start_matches(':')
                .trim()
                .trim_end_matches('.')
                .split_whitespace()
                .map(String::from)
                .collect();
            let want = insert_sorted(list.as_deref().unwrap_or_default(), w);
            out.push(match words.get(placed) {
                None => wrong(format!("there is no word left for \"{w}\"")),
                Some(e) if e != w => wrong(format!("the next word is \"{e}\", not \"{w}\"")),
                Some(_) if got != want => wrong(format!(
                    "inserting \"{w}\" gives {}, not {}",
                    want.join(" "),
                    got.join(" ")
                )),
                Some(_) => ok(format!("inserting \"{w}\" gives {}", got.join(" "))),
            });
            list = Some(got);
            placed += 1;
        } else if line.starts_with("The answer is ") {
            let last = list.as_ref().map(|l| l.join(" "));
            let check = if let (Some(_), Some(missed)) = (&last, words.get(placed)) {
                wrong(format!("\"{missed}\" was not placed"))
            } else {
                answer_check(final_answer(line), last.as_deref(), "no list was built")
            };
            out.push(check);
            answered = true;
        } else {
            out.push(wrong(format!("\"{line}\" is not a step")));
        }
    }
    if !answered {
        out.push(wrong("there is no final answer after the steps".into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::WordTask;

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn reference_solutions_pass_every_step() {
        for kind in [Kind::LastLetter, Kind::WordSort] {
            let p = WordTask::problem(kind, &words(&["pear", "apple", "fig", "kite"]));
            let checks = critique(&p, &p.solution).unwrap();
            assert!(checks.iter().all(|c| c.right), "{checks:?}");
            assert_eq!(checks.len(), [6, 5][kind as usize]);
            let target = cot_target(&p, &p.solution, true).unwrap();
            assert!(target.ends_with("Verification: Is the answer correct (Yes/No)? Yes"));
            assert!(
                target.starts_with("\"pear\" ") || target.starts_with("Start with \"pear\""),
                "{target}"
            );
            // The label disagrees with the steps: no target.
            assert_eq!(cot_target(&p, &p.solution, false), None);
        }
    }

    #[test]
    fn a_wrong_letter_is_found_even_when_the_answer_is_right() {
        let p = WordTask::problem(Kind::LastLetter, &words(&["apple", "bird"]));
        let s = "The last letter of \"apple\" is \"e\".\nThe last letter of \"bird\" is \"r\".\nConcatenating them is \"ed\".\nThe answer is ed.";
        let checks = critique(&p, s).unwrap();
        let right: Vec<bool> = checks.iter().map(|c| c.right).collect();
        // The wrong letter, then a join of "er" written as "ed": both wrong.
        assert_eq!(right, [true, false, false, true]);
        assert_eq!(checks[1].says, "\"bird\" ends with \"d\", not \"r\"");
        let (text, yes) = rationale(&checks);
        assert!(!yes);
        // The rationale stops at the first wrong step.
        assert_eq!(
            text,
            "\"apple\" ends with \"e\". Correct.\n\"bird\" ends with \"d\", not \"r\". Wrong.\n"
        );
        // The answer matches the problem, but the verdict is No: dropped.
        assert_eq!(cot_target(&p, s, true), None);
    }

    #[test]
    fn skipped_words_and_missing_answers_are_wrong() {
        let p = WordTask::problem(Kind::LastLetter, &words(&["apple", "bird", "cat"]));
        let s = "The last letter of \"apple\" is \"e\".\nConcatenating them is \"e\".\nThe answer is e.";
        let checks = critique(&p, s).unwrap();
        assert_eq!(checks[1].says, "\"bird\" has no letter yet");
        assert!(!checks[1].right);
        let s = "The last letter of \"apple\" is \"e\".";
        assert!(!critique(&p, s).unwrap().last().unwrap().right);
    }

    #[test]
    fn insertions_are_re_executed_on_the_candidates_own_list() {
        let p = WordTask::problem(Kind::WordSort, &words(&["pear", "apple", "fig"]));
        // A wrong first insertion; the second is right given the wrong list.
        let s = "Start with \"pear\".\nInsert \"apple\": pear apple.\nInsert \"fig\": fig pear apple.\nThe answer is fig pear apple.";
        let right: Vec<bool> = critique(&p, s).unwrap().iter().map(|c| c.right).collect();
        assert_eq!(right, [true, false, false, true]);
        let s = "Start with \"pear\".\nInsert \"apple\": apple pear.\nThe answer is apple pear.";
        let checks = critique(&p, s).unwrap();
        assert_eq!(checks[2].says, "\"fig\" was not placed");
        assert!(!checks[2].right);
    }

    #[test]
    fn arith_equations_are_checked_against_the_problem_and_arithmetic() {
        let p = TextProblem {
            id: String::new(),
            prompt:
                "Mia has 7 pens. She gets 5 more. She gives away 3. How many pens does Mia have?\n"
                    .into(),
            solution: "7+5=12. 12-3=9. #### 9".into(),
            answer: "9".into(),
        };
        assert!(critique(&p, &p.solution).unwrap().iter().all(|c| c.right));
        let right =
            |s: &str| -> Vec<bool> { critique(&p, s).unwrap().iter().map(|c| c.right).collect() };
        assert_eq!(right("7+5=13. 13-3=10. #### 10"), [false, true, true]);
        assert_eq!(right("7+5=12. 12+3=15. #### 15"), [true, false, true]);
        assert_eq!(right("7+5=12. #### 12"), [true, false]);
        assert_eq!(right("7+5=12. 12-3=9."), [true, true, false]);
        let target = cot_target(&p, "7+5=12. 12-3=9. #### 9", true).unwrap();
        assert_eq!(
            target,
            "7+5=12. Correct.\n12-3=9. Correct.\nThe answer is 9. Correct.\nVerification: Is the answer correct (Yes/No)? Yes"
        );
    }
}
