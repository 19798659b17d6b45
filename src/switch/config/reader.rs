//! Reading the file structs: serde over `toml::Value`, with the TOML path
//! of every value that is of the wrong type or under an unknown key.

use std::fmt;

use serde::Deserialize;
use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::{Table, Value};

use super::{ConfigFile, Problem, Problems};

/// Reads the file structs from the parsed TOML, reporting every value that
/// is of the wrong type or under an unknown key. Serde stops at the first
/// such value, so each is reported and dropped, and reading starts again
/// (each round drops one value: it ends).
pub(super) fn read_file(root: Table, problems: &mut Problems) -> ConfigFile {
    let mut root = Value::Table(root);
    loop {
        match ConfigFile::deserialize(De(root.clone())) {
            Ok(file) => return file,
            Err(bad) => {
                problems.found.push(Problem {
                    path: path(&bad.at),
                    message: bad.message,
                });
                let Some(dropped) = drop_value(&mut root, &bad.at) else {
                    return ConfigFile::default();
                };
                problems.dropped.insert(path(dropped));
            }
        }
    }
}

/// One step of a TOML path: `acquirers[1].links` is `acquirers`, `[1]`,
/// `links`.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn path(at: &[Step]) -> String {
    let mut path = String::new();
    for step in at {
        match step {
            Step::Key(k) if path.is_empty() => path.push_str(k),
            Step::Key(k) => path += &format!(".{k}"),
            Step::Index(i) => path += &format!("[{i}]"),
        }
    }
    path
}

/// Drops the value at `at`, or the whole array for one of its elements so
/// that the other elements keep their indices; returns the path dropped.
fn drop_value<'a>(root: &mut Value, at: &'a [Step]) -> Option<&'a [Step]> {
    let last_key = at.iter().rposition(|s| matches!(s, Step::Key(_)))?;
    let mut v = root;
    for step in &at[..last_key] {
        v = match (step, v) {
            (Step::Key(k), Value::Table(t)) => t.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match (&at[last_key], v) {
        (Step::Key(k), Value::Table(t)) => t.remove(k).map(|_| &at[..=last_key]),
        _ => None,
    }
}

/// What was wrong with a value, and where.
#[derive(Debug)]
struct Bad {
    at: Vec<Step>,
    message: String,
}

impl Bad {
    fn found(expected: &str, v: &Value) -> Bad {
        let found = match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        };
        de::Error::custom(format!("expected {expected}, found {found}"))
    }

    fn under(mut self, step: Step) -> Bad {
        self.at.insert(0, step);
        self
    }
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", path(&self.at), self.message)
    }
}

impl std::error::Error for Bad {}

impl de::Error for Bad {
    fn custom<T: fmt::Display>(message: T) -> Bad {
        Bad {
            at: Vec::new(),
            message: message.to_string(),
        }
    }

    fn unknown_field(_: &str, known: &'static [&'static str]) -> Bad {
        de::Error::custom(format!("unknown key (known here: {})", known.join(", ")))
    }
}

/// A deserializer of one TOML value: it says what was expected in the
/// config's words ("expected an integer, found a string", "70000 is out of
/// range (0..=65535)"), and its errors carry their path.
struct De(Value);

macro_rules! unsigned {
    ($($method:ident $visit:ident $t:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
            match self.0 {
                Value::Integer(i) => match <$t>::try_from(i) {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(de::Error::custom(format!(
                        "{i} is out of range ({}..={})",
                        <$t>::MIN,
                        <$t>::MAX
                    ))),
                },
                other => Err(Bad::found("an integer", &other)),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for De {
    type Error = Bad;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            Value::Integer(i) => visitor.visit_i64(i),
            Value::Float(x) => visitor.visit_f64(x),
            Value::Boolean(b) => visitor.visit_bool(b),
            Value::Datetime(d) => visitor.visit_string(d.to_string()),
            Value::Array(a) => visitor.visit_seq(Elements(a.into_iter().enumerate())),
            Value::Table(t) => visitor.visit_map(Entries(t.into_iter(), None)),
        }
    }

    unsigned! {
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        match self.0 {
            Value::Boolean(b) => visitor.visit_bool(b),
            other => Err(Bad::found("true or false", &other)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            other => Err(Bad::found("a string", &other)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        self.deserialize_string(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        match self.0 {
            Value::Array(_) => self.deserialize_any(visitor),
            other => Err(Bad::found("an array", &other)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        match self.0 {
            Value::Table(_) => self.deserialize_any(visitor),
            other => Err(Bad::found("a table", &other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Bad> {
        self.deserialize_map(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Bad> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// A table's entries; the value of the key just read waits in `.1`.
struct Entries(toml::map::IntoIter<String, Value>, Option<(String, Value)>);

impl<'de> MapAccess<'de> for Entries {
    type Error = Bad;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Bad> {
        let Some((key, value)) = self.0.next() else {
            return Ok(None);
        };
        let read = seed.deserialize(StrDeserializer::<Bad>::new(&key));
        let read = read.map_err(|e| e.under(Step::Key(key.clone())))?;
        self.1 = Some((key, value));
        Ok(Some(read))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Bad> {
        let (key, value) = self.1.take().ok_or_else(|| de::Error::custom("no value"))?;
        seed.deserialize(De(value))
            .map_err(|e| e.under(Step::Key(key)))
    }
}

/// An array's elements, numbered.
struct Elements(std::iter::Enumerate<std::vec::IntoIter<Value>>);

impl<'de> SeqAccess<'de> for Elements {
    type Error = Bad;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Bad> {
        let Some((i, value)) = self.0.next() else {
            return Ok(None);
        };
        let read = seed.deserialize(De(value));
        read.map(Some).map_err(|e| e.under(Step::Index(i)))
    }
}
