//! `key=value …`: a record's fields on one line, nested objects as `outer.inner=…`, for
//! the table's DETAILS column and the report's hover. Taken from the record's own
//! `Serialize`, so the line always holds what the JSON holds, in its order; only two
//! rules differ from the JSON: `…_raw` flag words are left out (the decoded names beside
//! them say the same), and a name with a `…_hex` beside it carries those exact bytes
//! (the `…_hex` itself is left out).

use serde::{
    Serialize, Serializer,
    ser::{
        SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
        SerializeTupleStruct, SerializeTupleVariant,
    },
};
use serde_json::Value;

/// One `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    /// `addr`, or `vma.start` for a nested object's field.
    pub key: String,
    pub value: Text,
}

/// A value as the line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// A JSON string: its exact bytes (a name may hold any byte); how to show them is the
    /// caller's (the table escapes them as maps does).
    Bytes(Vec<u8>),
    /// A number, `true`/`false`, `null` or an array, as JSON writes it.
    Json(String),
}

/// The fields of `record` as `key=value`s, leaving out its top-level keys in `skip` (and
/// all below them).
pub fn details<T: Serialize + ?Sized>(record: &T, skip: &[&str]) -> Vec<Detail> {
    let mut leaves = Vec::new();
    // Serializing into a Vec of leaves fails only on a map with a non-string key, which
    // no record has.
    let _ = record.serialize(At {
        key: String::new(),
        leaves: &mut leaves,
    });
    // `X_hex` beside `X`: X's exact bytes.
    let exact: Vec<(String, Vec<u8>)> = leaves
        .iter()
        .filter_map(|(key, value)| match value {
            Text::Bytes(hex) => Some((
                key.strip_suffix("_hex")?.to_owned(),
                super::unhex(std::str::from_utf8(hex).ok()?)?,
            )),
            Text::Json(_) => None,
        })
        .collect();
    leaves
        .into_iter()
        .filter(|(key, _)| {
            let last = key.rsplit('.').next().unwrap_or(key);
            let first = key.split('.').next().unwrap_or(key);
            !(last.ends_with("_raw") || last.ends_with("_hex") || skip.contains(&first))
        })
        .map(|(key, value)| {
            let value = match exact.iter().find(|(base, _)| *base == key) {
                Some((_, bytes)) => Text::Bytes(bytes.clone()),
                None => value,
            };
            Detail { key, value }
        })
        .collect()
}

/// Renders details as one line, the strings' bytes through `bytes`.
pub fn details_line(details: &[Detail], bytes: impl Fn(&[u8]) -> String) -> String {
    let parts: Vec<String> = details
        .iter()
        .map(|d| match &d.value {
            Text::Bytes(b) => format!("{}={}", d.key, bytes(b)),
            Text::Json(j) => format!("{}={j}", d.key),
        })
        .collect();
    parts.join(" ")
}

type Leaves = Vec<(String, Text)>;

/// Serializes one value found at `key` into leaves.
struct At<'a> {
    key: String,
    leaves: &'a mut Leaves,
}

impl<'a> At<'a> {
    fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<(), serde_json::Error> {
        let text = serde_json::to_string(value)?;
        self.leaves.push((self.key, Text::Json(text)));
        Ok(())
    }

    /// The fields of an object below `key` (at the top, keys of their own).
    fn object(self) -> Object<'a> {
        let prefix = if self.key.is_empty() {
            String::new()
        } else {
            format!("{}.", self.key)
        };
        Object {
            prefix,
            pending_key: None,
            leaves: self.leaves,
        }
    }

    fn array(self) -> Array<'a> {
        Array {
            key: self.key,
            items: Vec::new(),
            leaves: self.leaves,
        }
    }
}

struct Object<'a> {
    prefix: String,
    /// A map's key, until its value comes.
    pending_key: Option<String>,
    leaves: &'a mut Leaves,
}

impl Object<'_> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        value.serialize(At {
            key: format!("{}{key}", self.prefix),
            leaves: self.leaves,
        })
    }
}

/// An array's items, shown as the JSON array.
struct Array<'a> {
    key: String,
    items: Vec<Value>,
    leaves: &'a mut Leaves,
}

impl Array<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), serde_json::Error> {
        self.items.push(serde_json::to_value(value)?);
        Ok(())
    }

    fn done(self) -> Result<(), serde_json::Error> {
        At {
            key: self.key,
            leaves: self.leaves,
        }
        .json(&self.items)
    }
}

macro_rules! as_json {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result<(), serde_json::Error> {
            self.json(&v)
        })*
    };
}

impl<'a> Serializer for At<'a> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    as_json!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_f32: f32,
        serialize_f64: f64, serialize_bytes: &[u8],
    );

    fn serialize_char(self, v: char) -> Result<(), serde_json::Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), serde_json::Error> {
        self.leaves
            .push((self.key, Text::Bytes(v.as_bytes().to_vec())));
        Ok(())
    }

    fn serialize_none(self) -> Result<(), serde_json::Error> {
        self.json(&())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), serde_json::Error> {
        v.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), serde_json::Error> {
        self.json(&())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), serde_json::Error> {
        self.json(&())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), serde_json::Error> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), serde_json::Error> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), serde_json::Error> {
        let mut object = self.object();
        object.field(variant, v)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a>, serde_json::Error> {
        Ok(self.array())
    }

    fn serialize_tuple(self, _: usize) -> Result<Array<'a>, serde_json::Error> {
        Ok(self.array())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Array<'a>, serde_json::Error> {
        Ok(self.array())
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Array<'a>, serde_json::Error> {
        Ok(self.array())
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, serde_json::Error> {
        Ok(self.object())
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Object<'a>, serde_json::Error> {
        Ok(self.object())
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Object<'a>, serde_json::Error> {
        Ok(self.object())
    }
}

impl SerializeMap for Object<'_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), serde_json::Error> {
        self.pending_key = Some(match serde_json::to_value(key)? {
            Value::String(s) => s,
            other => other.to_string(),
        });
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let key = self.pending_key.take().unwrap_or_default();
        self.field(&key, value)
    }

    fn end(self) -> Result<(), serde_json::Error> {
        Ok(())
    }
}

macro_rules! object_fields {
    ($($trait:ident),*) => {
        $(impl $trait for Object<'_> {
            type Ok = ();
            type Error = serde_json::Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), serde_json::Error> {
                self.field(key, value)
            }

            fn end(self) -> Result<(), serde_json::Error> {
                Ok(())
            }
        })*
    };
}

object_fields!(SerializeStruct, SerializeStructVariant);

macro_rules! array_items {
    ($($trait:ident: $method:ident),*) => {
        $(impl $trait for Array<'_> {
            type Ok = ();
            type Error = serde_json::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), serde_json::Error> {
                self.item(value)
            }

            fn end(self) -> Result<(), serde_json::Error> {
                self.done()
            }
        })*
    };
}

array_items!(
    SerializeSeq: serialize_element,
    SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field,
    SerializeTupleVariant: serialize_field
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_objects_raw_words_and_exact_names() {
        let record = serde_json::json!({
            "probe": "remap_pfn_range",
            "vma": {"start": "0x1000", "flags": "READ", "flags_raw": "0x1",
                    "path": "/tmp/\u{fffd}", "path_hex": "2f746d702fff"},
            "prot": "READ|WRITE", "prot_raw": 3, "fd": -1, "shared": true,
            "args": ["0x1", "0x2"], "gone": null,
        });
        let details = details(&record, &["probe"]);
        let text = details_line(&details, |b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(
            text,
            "vma.start=0x1000 vma.flags=READ vma.path=/tmp/\u{fffd} prot=READ|WRITE fd=-1 \
             shared=true args=[\"0x1\",\"0x2\"] gone=null"
        );
        let path = details.iter().find(|d| d.key == "vma.path").unwrap();
        assert_eq!(path.value, Text::Bytes(b"/tmp/\xff".to_vec()));
    }
}
