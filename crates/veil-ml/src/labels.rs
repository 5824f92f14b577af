//! Matching a classifier's outputs to the label column's declared classes.
//!
//! Rules, in order:
//! - string labels match categories by name;
//! - integer labels match categories by value when every category is an integer
//!   (a label column declared as 0/1, or an int column);
//! - otherwise an integer label is a position: the model's i-th class (from its own class
//!   list, or i itself) is the label column's i-th category. scikit-learn sorts its classes,
//!   so declare categories in the order of the training targets (0 first).
//!
//! A prediction that matches no declared class counts as "(other)" (always wrong).

use std::collections::HashMap;

use crate::{ClassLabels, Output};

#[derive(Debug, Clone)]
pub struct ClassMap {
    by_name: HashMap<String, usize>,
    /// All categories are integers: match integer labels by value.
    numeric: bool,
    /// The model's own integer class list, if it declares one.
    model_ints: Option<Vec<i64>>,
    classes: usize,
}

impl ClassMap {
    pub fn new(categories: &[String], model_classes: Option<&ClassLabels>) -> Self {
        Self {
            by_name: categories
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i))
                .collect(),
            numeric: categories.iter().all(|c| c.parse::<i64>().is_ok()),
            model_ints: match model_classes {
                Some(ClassLabels::Ints(v)) => Some(v.clone()),
                _ => None,
            },
            classes: categories.len(),
        }
    }

    /// The class index of a true label.
    pub fn truth(&self, label: &str) -> Option<usize> {
        self.by_name.get(label).copied()
    }

    fn int(&self, v: i64) -> Option<usize> {
        if self.numeric {
            return self.by_name.get(&v.to_string()).copied();
        }
        let pos = match &self.model_ints {
            Some(list) => list.iter().position(|x| *x == v)?,
            None => usize::try_from(v).ok()?,
        };
        (pos < self.classes).then_some(pos)
    }

    /// The class index of a prediction, if it is one of the declared classes.
    pub fn class_of(&self, p: &Output) -> Option<usize> {
        match p {
            Output::StringLabel(v) => self.by_name.get(v).copied(),
            Output::IntLabel(v) => self.int(*v),
            Output::ClassIndex(idx) => {
                if self.numeric {
                    self.by_name.get(&idx.to_string()).copied()
                } else {
                    (*idx < self.classes).then_some(*idx)
                }
            }
            Output::Value(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cats(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn positions_values_and_names() {
        let m = ClassMap::new(
            &cats(&["malignant", "benign"]),
            Some(&ClassLabels::Ints(vec![0, 1])),
        );
        assert_eq!(
            [0, 1, 7].map(|v| m.class_of(&Output::IntLabel(v))),
            [Some(0), Some(1), None]
        );
        assert_eq!(m.truth("benign"), Some(1));

        let numeric = ClassMap::new(&cats(&["1", "0"]), None);
        assert_eq!(numeric.class_of(&Output::IntLabel(0)), Some(1), "by value");

        let s = ClassMap::new(&cats(&["cat", "dog"]), None);
        assert_eq!(s.class_of(&Output::StringLabel("dog".into())), Some(1));
        assert_eq!(s.class_of(&Output::StringLabel("cow".into())), None);
        assert_eq!(s.class_of(&Output::ClassIndex(1)), Some(1));
        assert_eq!(s.class_of(&Output::ClassIndex(5)), None);
        assert_eq!(s.class_of(&Output::Value(1.0)), None);
    }
}
