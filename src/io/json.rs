//! Strict JSON text: a file that gives one key twice in an object is refused.
//!
//! serde_json keeps the last of repeated keys silently when it reads a map or a free-form
//! value, so `{"kt": 1, "kt": 100}` would run at kT = 100 unnoticed, and a model file whose
//! field settings repeat `n_rbf` would build a different field than its author read. Typed
//! structs refuse repeated fields already; this refuses them at every depth, free-form
//! parts (a field family's settings, a training summary) included.
//!
//! The check walks the text without building anything: only the keys of the objects being
//! read and the path to the current value are held. (It used to build a whole value tree, a
//! path string per array element included, before the file's own parse: a 20 MB model file
//! with five million extra parameters asked for over a gigabyte, and a refusal aborted the
//! host.) It also counts the values, so that the reader can ask the system, fallibly, for
//! the memory the parse that follows may need ([`parse_bytes`]).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Parses JSON text into a [`Value`], refusing an object that gives a key twice: serde_json
/// would keep the last silently, so `{"kt": 1, "kt": 100}` would run at kT = 100 unnoticed.
/// The error of a repeated key is a data error ([`serde_json::Error::is_data`]) naming the
/// field by its path (`energy.epsilon`) and its place in the text.
pub fn parse_unique(text: &str) -> serde_json::Result<Value> {
    check_unique(text)?;
    // No key is repeated, so serde_json's last-one-wins never applies.
    serde_json::from_str(text)
}

/// Checks that no object of the JSON text gives a key twice (see [`parse_unique`]) and returns
/// how many values the text holds (every number, string, array, object, `true`, `false` and
/// `null`), without building them.
pub fn check_unique(text: &str) -> serde_json::Result<u64> {
    let path = RefCell::new(Vec::new());
    let count = Cell::new(0);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    UniqueKeys {
        path: &path,
        count: &count,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(count.get())
}

/// Bytes a parse may take per JSON value: a `serde_json::Value` (32 bytes) in a vector that
/// may have doubled, or an object entry with its key, rounded up. Typed fields take less.
const PARSE_BYTES_PER_VALUE: u64 = 128;

/// The memory a parse of `n_values` JSON values (the count of [`check_unique`]) may take, for
/// the reader to ask the system for first (`crate::alloc::probed_build`): where the system
/// would refuse it, the refusal then comes as a resource error instead of aborting the process
/// half-way through the parse. `None` when the product overflows.
#[must_use]
pub fn parse_bytes(n_values: u64) -> Option<usize> {
    usize::try_from(n_values.checked_mul(PARSE_BYTES_PER_VALUE)?).ok()
}

/// One step of the path to the value being read: an object's key or an array's index.
enum Segment {
    Key(String),
    Index(usize),
}

/// The path `a.b[3].c` of a value, for messages.
fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A JSON value whose objects have distinct keys, read and dropped; `path` holds where it sits
/// (for the message of a repeated key, formatted only then) and `count` the values seen.
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    path: &'a RefCell<Vec<Segment>>,
    count: &'a Cell<u64>,
}

impl UniqueKeys<'_> {
    fn one(&self) {
        self.count.set(self.count.get().saturating_add(1));
    }

    /// Reads the next value with `segment` on the path.
    fn within<T>(&self, segment: Segment, read: impl FnOnce(Self) -> T) -> T {
        self.path.borrow_mut().push(segment);
        let result = read(*self);
        self.path.borrow_mut().pop();
        result
    }
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        self.one();
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        self.one();
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        self.one();
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        self.one();
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        self.one();
        Ok(())
    }

    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        self.one();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.one();
        let mut index = 0;
        while self
            .within(Segment::Index(index), |item| seq.next_element_seed(item))?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        self.one();
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                let mut path = self.path.borrow_mut();
                path.push(Segment::Key(key));
                let message = format!(
                    "field `{}` is given twice (JSON keeps one value per field)",
                    render(&path)
                );
                path.pop();
                return Err(de::Error::custom(message));
            }
            self.within(Segment::Key(key.clone()), |value| {
                map.next_value_seed(value)
            })?;
            keys.insert(key);
        }
        Ok(())
    }
}
