//! A YAML document as a tree whose every node knows its line, so the import can point at the
//! line of anything it could not carry over. Merge keys (`<<: *defaults`) and anchors are
//! resolved by the parser; a merged key reports the line of the alias that brought it.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: u64,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[(Key, Node)] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    pub fn items(&self) -> &[Node] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self.value, Value::Map(_))
    }

    /// A scalar as the text Compose would use: numbers and booleans as written in YAML 1.2.
    pub fn scalar(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(n) => Some(n.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.as_str() {
                "true" | "yes" => Some(true),
                "false" | "no" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match &self.value {
            Value::Int(n) => Some(*n),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Why a document is not YAML, with the line when the parser knows it.
#[derive(Debug, Clone)]
pub struct ParseError {
    pub line: Option<u64>,
    pub message: String,
}

pub fn parse(text: &str) -> Result<Node, ParseError> {
    match serde_saphyr::from_str::<Spanned<Tree>>(text) {
        Ok(tree) => Ok(node(tree)),
        Err(error) => {
            let line = error.location().map(|l| l.line()).filter(|l| *l > 0);
            // The error's own text repeats the snippet; keep its first line.
            let message = error.to_string();
            let message = message
                .lines()
                .next()
                .unwrap_or("not valid YAML")
                .to_owned();
            let message = if message.contains("budget breached") {
                "too large, or too many aliases expanding into each other (a YAML bomb?)".to_owned()
            } else {
                message
            };
            Err(ParseError { line, message })
        }
    }
}

fn node(tree: Spanned<Tree>) -> Node {
    // Where the value is written, also when a merge key (`<<: *defaults`) brought it here.
    let line = tree.defined.line();
    let value = match tree.value {
        Tree::Null => Value::Null,
        Tree::Bool(b) => Value::Bool(b),
        Tree::Int(n) => Value::Int(n),
        Tree::Float(f) => Value::Float(f),
        Tree::Str(s) => Value::Str(s),
        Tree::Seq(items) => Value::Seq(items.into_iter().map(node).collect()),
        Tree::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        name: k.value.text(),
                        line: k.defined.line(),
                    };
                    (key, node(v))
                })
                .collect(),
        ),
    };
    Node { value, line }
}

/// What the parser hands over; `Spanned` at every level carries the lines.
enum Tree {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Tree>>),
    Map(Vec<(Spanned<ScalarKey>, Spanned<Tree>)>),
}

/// Keys are scalars; `80: x` or `true: y` keep their text.
struct ScalarKey(String);

impl ScalarKey {
    fn text(self) -> String {
        self.0
    }
}

impl<'de> Deserialize<'de> for ScalarKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = ScalarKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E>(self, v: &str) -> Result<ScalarKey, E> {
                Ok(ScalarKey(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ScalarKey, E> {
                Ok(ScalarKey(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ScalarKey, E> {
                Ok(ScalarKey(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ScalarKey, E> {
                Ok(ScalarKey(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ScalarKey, E> {
                Ok(ScalarKey(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<ScalarKey, E> {
                Ok(ScalarKey("null".into()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TreeVisitor;
        impl<'de> Visitor<'de> for TreeVisitor {
            type Value = Tree;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_unit<E>(self) -> Result<Tree, E> {
                Ok(Tree::Null)
            }
            fn visit_none<E>(self) -> Result<Tree, E> {
                Ok(Tree::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Tree, D2::Error> {
                Tree::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
                Ok(Tree::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
                Ok(Tree::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
                Ok(i64::try_from(v).map_or_else(|_| Tree::Str(v.to_string()), Tree::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Tree, E> {
                Ok(Tree::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
                Ok(Tree::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Tree, E> {
                Ok(Tree::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Tree::Map(entries))
            }
        }
        deserializer.deserialize_any(TreeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_anchors_and_merge_keys() {
        let doc = parse(
            "x-defaults: &d\n  restart: always\nservices:\n  web:\n    <<: *d\n    image: nginx\n    ports: [\"80:80\"]\n",
        )
        .unwrap();
        let web = doc.get("services").unwrap().get("web").unwrap();
        assert_eq!(web.get("image").unwrap().line, 6);
        assert_eq!(web.get("restart").unwrap().as_str(), Some("always"));
        assert_eq!(web.get("ports").unwrap().items()[0].as_str(), Some("80:80"));
        assert_eq!(doc.get("services").unwrap().entries()[0].0.line, 4);
    }

    #[test]
    fn errors_name_the_line() {
        let error = parse("services:\n  web:\n    image: [\n").unwrap_err();
        assert!(error.line.is_some(), "{error:?}");
    }
}
