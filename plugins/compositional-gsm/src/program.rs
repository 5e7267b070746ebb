//! The executable form of a solution: its calculator steps (GSM8K's `<<48/2=24>>`, or an
//! `arith` solution's `7+5=12.`), with the number that becomes X and every reuse of an earlier
//! step's result as references. Running it with another X recomputes Q2's answer.
//!
//! ```text
//! #1 = X/2; #2 = X+#1        (48 became X: with X = 48 it gives 24, 72)
//! ```

use std::fmt;

/// One token of a step's expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Num(f64),
    /// The number X replaced.
    X,
    /// The result of step `k` (0-based).
    Ref(usize),
    Op(char),
    Open,
    Close,
}

/// Steps, each an expression over numbers, X and earlier results.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub steps: Vec<Vec<Tok>>,
}

/// A number as a solution writes it: integers without a decimal point, others with at most
/// six decimals (trailing zeros dropped).
pub fn show(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Tokens of an arithmetic expression (`(10+5)*2`, `.5*12`); `None` when it has anything
/// else (a `%`, a unit, a variable).
pub fn lex(expr: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == ',')
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().filter(|c| **c != ',').collect();
            out.push(Tok::Num(s.parse().ok()?));
            continue;
        }
        out.push(match c {
            '+' | '-' | '*' | '/' => Tok::Op(c),
            'x' | '×' => Tok::Op('*'),
            '÷' => Tok::Op('/'),
            '(' => Tok::Open,
            ')' => Tok::Close,
            _ => return None,
        });
        i += 1;
    }
    (!out.is_empty()).then_some(out)
}

/// Evaluates `toks` with `x` for X and `results` for earlier steps: `+ - * /` with the usual
/// precedence, parentheses and unary minus. `None` on a malformed expression, a reference
/// to a later step, or a division by zero.
pub fn eval(toks: &[Tok], x: f64, results: &[f64]) -> Option<f64> {
    struct P<'a> {
        t: &'a [Tok],
        i: usize,
        x: f64,
        r: &'a [f64],
    }
    impl P<'_> {
        fn sum(&mut self) -> Option<f64> {
            let mut v = self.product()?;
            while let Some(Tok::Op(op @ ('+' | '-'))) = self.t.get(self.i) {
                self.i += 1;
                let w = self.product()?;
                v = if *op == '+' { v + w } else { v - w };
            }
            Some(v)
        }
        fn product(&mut self) -> Option<f64> {
            let mut v = self.atom()?;
            while let Some(Tok::Op(op @ ('*' | '/'))) = self.t.get(self.i) {
                self.i += 1;
                let w = self.atom()?;
                v = if *op == '*' {
                    v * w
                } else if w == 0.0 {
                    return None;
                } else {
                    v / w
                };
            }
            Some(v)
        }
        fn atom(&mut self) -> Option<f64> {
            let t = self.t.get(self.i)?;
            self.i += 1;
            match t {
                Tok::Num(n) => Some(*n),
                Tok::X => Some(self.x),
                Tok::Ref(k) => self.r.get(*k).copied(),
                Tok::Op('-') => Some(-self.atom()?),
                Tok::Open => {
                    let v = self.sum()?;
                    (self.t.get(self.i) == Some(&Tok::Close)).then(|| self.i += 1)?;
                    Some(v)
                }
                _ => None,
            }
        }
    }
    let mut p = P {
        t: toks,
        i: 0,
        x,
        r: results,
    };
    let v = p.sum()?;
    (p.i == toks.len() && v.is_finite()).then_some(v)
}

impl Program {
    /// Every step's result with `x` for X; `None` when a step does not evaluate.
    pub fn run(&self, x: f64) -> Option<Vec<f64>> {
        let mut results = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let v = eval(s, x, &results)?;
            results.push(v);
        }
        Some(results)
    }

    /// The last step's result with `x` for X.
    pub fn answer(&self, x: f64) -> Option<f64> {
        self.run(x)?.last().copied()
    }

    /// The steps written out with `x` for X and earlier results by value:
    /// `30/2=15. 30+15=45.` (the worked solution of the standalone Q2).
    pub fn worked(&self, x: f64) -> Option<String> {
        let results = self.run(x)?;
        let mut out = Vec::new();
        for (s, r) in self.steps.iter().zip(&results) {
            let lhs: String = s
                .iter()
                .map(|t| match t {
                    Tok::Num(n) => show(*n),
                    Tok::X => show(x),
                    Tok::Ref(k) => show(results[*k]),
                    Tok::Op(c) => c.to_string(),
                    Tok::Open => "(".into(),
                    Tok::Close => ")".into(),
                })
                .collect();
            out.push(format!("{lhs}={}.", show(*r)));
        }
        Some(out.join(" "))
    }

    /// The program of calculator steps `(expression, result)` in which the literal `x_was`
    /// becomes X and a literal equal to an earlier step's result refers to that step (the
    /// latest such). `None` when a step does not re-evaluate to its stated result (within
    /// 1e-6 relative), when `x_was` is also an earlier result (ambiguous), or when X is never
    /// used.
    pub fn from_steps(steps: &[(String, f64)], x_was: f64) -> Option<Program> {
        let mut out = Vec::new();
        let mut seen: Vec<f64> = Vec::new();
        let mut uses_x = false;
        for (expr, result) in steps {
            let toks = lex(expr)?;
            let mapped: Vec<Tok> = toks
                .into_iter()
                .map(|t| match t {
                    Tok::Num(n) if n == x_was => {
                        uses_x = true;
                        Tok::X
                    }
                    Tok::Num(n) => match seen.iter().rposition(|r| *r == n) {
                        Some(k) => Tok::Ref(k),
                        None => Tok::Num(n),
                    },
                    t => t,
                })
                .collect();
            if seen.contains(&x_was) {
                return None;
            }
            let v = eval(&mapped, x_was, &seen)?;
            if (v - result).abs() > 1e-6 * result.abs().max(1.0) {
                return None;
            }
            seen.push(*result);
            out.push(mapped);
        }
        (uses_x && !out.is_empty()).then_some(Program { steps: out })
    }

    /// Parses [`Display`](fmt::Display)'s form back.
    pub fn parse(s: &str) -> Option<Program> {
        let mut steps = Vec::new();
        for (i, part) in s.split(';').enumerate() {
            let (name, expr) = part.split_once('=')?;
            if name.trim() != format!("#{}", i + 1) {
                return None;
            }
            let mut toks = Vec::new();
            let mut rest = expr.trim();
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix('X') {
                    toks.push(Tok::X);
                    rest = r;
                } else if let Some(r) = rest.strip_prefix('#') {
                    let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                    let k: usize = r[..end].parse().ok()?;
                    if k == 0 || k > i {
                        return None;
                    }
                    toks.push(Tok::Ref(k - 1));
                    rest = &r[end..];
                } else {
                    let end = rest.find(['X', '#']).unwrap_or(rest.len());
                    toks.extend(lex(&rest[..end])?);
                    rest = &rest[end..];
                }
            }
            steps.push(toks);
        }
        Some(Program { steps })
    }
}

impl fmt::Display for Program {
    /// `#1 = X/2; #2 = X+#1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "#{} = ", i + 1)?;
            for t in s {
                match t {
                    Tok::Num(n) => write!(f, "{}", show(*n))?,
                    Tok::X => write!(f, "X")?,
                    Tok::Ref(k) => write!(f, "#{}", k + 1)?,
                    Tok::Op(c) => write!(f, "{c}")?,
                    Tok::Open => write!(f, "(")?,
                    Tok::Close => write!(f, ")")?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(s: &[(&str, f64)]) -> Vec<(String, f64)> {
        s.iter().map(|(e, r)| (e.to_string(), *r)).collect()
    }

    #[test]
    fn expressions_evaluate_with_precedence_parentheses_and_unary_minus() {
        let e = |s: &str| eval(&lex(s).unwrap(), 0.0, &[]);
        assert_eq!(e("2+3*4"), Some(14.0));
        assert_eq!(e("(2+3)*4"), Some(20.0));
        assert_eq!(e("100-20-30"), Some(50.0));
        assert_eq!(e("12*50/60"), Some(10.0));
        assert_eq!(e("-3+5"), Some(2.0));
        assert_eq!(e(".5*12"), Some(6.0));
        assert_eq!(e("1,000*2"), Some(2000.0));
        assert_eq!(e("4/0"), None);
        assert_eq!(e("(2+3"), None);
        assert_eq!(e("2+"), None);
        assert!(lex("20%").is_none());
    }

    #[test]
    fn programs_map_the_replaced_number_and_earlier_results() {
        // Natalia: 48 clips in April, half as many in May.
        let p = Program::from_steps(&steps(&[("48/2", 24.0), ("48+24", 72.0)]), 48.0).unwrap();
        assert_eq!(p.to_string(), "#1 = X/2; #2 = X+#1");
        assert_eq!(p.answer(48.0), Some(72.0));
        assert_eq!(p.answer(30.0), Some(45.0));
        assert_eq!(p.worked(30.0).unwrap(), "30/2=15. 30+15=45.");
        assert_eq!(Program::parse(&p.to_string()), Some(p.clone()));
        // A stated result the expression does not give, X unused, X equal to a result.
        assert!(Program::from_steps(&steps(&[("48/2", 25.0)]), 48.0).is_none());
        assert!(Program::from_steps(&steps(&[("48/2", 24.0)]), 7.0).is_none());
        assert!(Program::from_steps(&steps(&[("12*2", 24.0), ("24+1", 25.0)]), 24.0).is_none());
        assert!(Program::parse("#1 = #1+2").is_none());
        assert!(Program::parse("#2 = 3").is_none());
        assert_eq!(show(2.5), "2.5");
        assert_eq!(show(3.0), "3");
    }
}
