//! Keys and values to and from bytes.
//!
//! [`Serde`] turns one type into bytes and back; a Kafka key or value may
//! be null, so both directions speak `Option<bytes>`. [`DefaultSerde`]
//! gives the types the processor handles out of the box their serde:
//! `String` (UTF-8), `i32`, `i64`, `f32`, `f64` (big-endian, as Java's
//! serializers), `()` (null; data present is an error), [`Ignore`] (any
//! data, nothing kept), `Vec<u8>` and `Bytes` (as they are). [`Json`]
//! reads and writes any serde type as JSON text.
//!
//! A serde that must look something up before it can read a record (a
//! schema registry's schema for the id the record names) does so in
//! [`Serde::prepare`], which the processor awaits: the lookup runs
//! asynchronously and, cached, once per schema. Writing has the same hook,
//! [`Serde::prepare_serialize`] (registering the schema of an output).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// Work a serde wants done before it reads or writes a record.
pub type Preparation = Pin<Box<dyn Future<Output = Result<(), SerdeError>> + Send>>;

/// Why a key or value could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SerdeError(pub String);

impl SerdeError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        SerdeError(message.into())
    }
}

/// Reads and writes one type.
pub trait Serde<T>: Send + Sync {
    /// The bytes of `value` (`None`: null).
    fn serialize(&self, value: &T) -> Result<Option<Bytes>, SerdeError>;
    /// The value of `data` (`None`: null).
    fn deserialize(&self, data: Option<&Bytes>) -> Result<T, SerdeError>;

    /// What to await before [`Self::deserialize`] reads `data`, if
    /// anything: a serde that looks something up (a schema registry's
    /// schema for the id at the start of `data`) does it here, and caches
    /// it, so that `deserialize` never blocks. The processor awaits it on
    /// its task: the thread is not blocked, and a cached lookup should
    /// return `None`. An error is the record's deserialization error.
    /// Default: nothing.
    fn prepare(&self, data: Option<&Bytes>) -> Option<Preparation> {
        let _ = data;
        None
    }

    /// What to await before [`Self::serialize`] writes `value`, if
    /// anything: the writing side of [`Self::prepare`] (registering, or
    /// looking up the id of, the schema `value` is written with), awaited
    /// the same way. An error is the output's serialization error, under
    /// the serialize stage's tolerance. Default: nothing.
    fn prepare_serialize(&self, value: &T) -> Option<Preparation> {
        let _ = value;
        None
    }
}

/// JSON text of any serde type, UTF-8. A null record is JSON `null` both
/// ways: `Json<Option<T>>` reads it as `None` and writes `None` as a null
/// record; any other `T` refuses a null record.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Click { page: String }
/// let serde = rill::Json::<Click>::serde(); // for input_value_serde / output_value_serde
/// ```
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> Json<T> {
    /// The serde, for a builder's `*_serde` methods.
    pub fn serde() -> Arc<dyn Serde<T>> {
        Arc::new(Json(PhantomData))
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Serde<T> for Json<T> {
    fn serialize(&self, value: &T) -> Result<Option<Bytes>, SerdeError> {
        let text = serde_json::to_vec(value)
            .map_err(|e| SerdeError::new(format!("cannot write {} as JSON: {e}", std::any::type_name::<T>())))?;
        Ok((text != b"null").then(|| Bytes::from(text)))
    }

    fn deserialize(&self, data: Option<&Bytes>) -> Result<T, SerdeError> {
        serde_json::from_slice(data.map_or(&b"null"[..], |d| &d[..]))
            .map_err(|e| SerdeError::new(format!("not the JSON of {}: {e}", std::any::type_name::<T>())))
    }
}

/// Types with a serde of their own.
pub trait DefaultSerde: Sized + Send + 'static {
    /// That serde.
    fn serde() -> Arc<dyn Serde<Self>>;
}

/// Accepts any data, null included, and keeps none of it: for keys or
/// values the function does not look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignore;

/// The serde of a [`DefaultSerde`] type, by name.
#[derive(Debug)]
pub struct Builtin<T>(PhantomData<fn() -> T>);

impl<T> Default for Builtin<T> {
    fn default() -> Self {
        Builtin(PhantomData)
    }
}

fn required<'a>(data: Option<&'a Bytes>, what: &str) -> Result<&'a Bytes, SerdeError> {
    data.ok_or_else(|| SerdeError::new(format!("null where {what} was expected")))
}

fn fixed<const N: usize>(data: Option<&Bytes>, what: &str) -> Result<[u8; N], SerdeError> {
    let data = required(data, what)?;
    data.as_ref().try_into().map_err(|_| SerdeError::new(format!("{} bytes where {what} takes {N}", data.len())))
}

macro_rules! numbers {
    ($($t:ty => $name:literal),*) => {$(
        impl Serde<$t> for Builtin<$t> {
            fn serialize(&self, value: &$t) -> Result<Option<Bytes>, SerdeError> {
                Ok(Some(Bytes::copy_from_slice(&value.to_be_bytes())))
            }
            fn deserialize(&self, data: Option<&Bytes>) -> Result<$t, SerdeError> {
                Ok(<$t>::from_be_bytes(fixed(data, $name)?))
            }
        }
        impl DefaultSerde for $t {
            fn serde() -> Arc<dyn Serde<Self>> {
                Arc::new(Builtin::<$t>::default())
            }
        }
    )*};
}

numbers!(i32 => "an i32", i64 => "an i64", f32 => "an f32", f64 => "an f64");

impl Serde<String> for Builtin<String> {
    fn serialize(&self, value: &String) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(value.as_bytes())))
    }
    fn deserialize(&self, data: Option<&Bytes>) -> Result<String, SerdeError> {
        let data = required(data, "a string")?;
        String::from_utf8(data.to_vec()).map_err(|e| SerdeError::new(format!("not UTF-8: {e}")))
    }
}

impl Serde<()> for Builtin<()> {
    fn serialize(&self, _: &()) -> Result<Option<Bytes>, SerdeError> {
        Ok(None)
    }
    fn deserialize(&self, data: Option<&Bytes>) -> Result<(), SerdeError> {
        match data {
            None => Ok(()),
            Some(data) => Err(SerdeError::new(format!("{} bytes where null was expected", data.len()))),
        }
    }
}

impl Serde<Ignore> for Builtin<Ignore> {
    fn serialize(&self, _: &Ignore) -> Result<Option<Bytes>, SerdeError> {
        Ok(None)
    }
    fn deserialize(&self, _: Option<&Bytes>) -> Result<Ignore, SerdeError> {
        Ok(Ignore)
    }
}

impl Serde<Vec<u8>> for Builtin<Vec<u8>> {
    fn serialize(&self, value: &Vec<u8>) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(Bytes::copy_from_slice(value)))
    }
    fn deserialize(&self, data: Option<&Bytes>) -> Result<Vec<u8>, SerdeError> {
        Ok(required(data, "bytes")?.to_vec())
    }
}

impl Serde<Bytes> for Builtin<Bytes> {
    fn serialize(&self, value: &Bytes) -> Result<Option<Bytes>, SerdeError> {
        Ok(Some(value.clone()))
    }
    fn deserialize(&self, data: Option<&Bytes>) -> Result<Bytes, SerdeError> {
        Ok(required(data, "bytes")?.clone())
    }
}

macro_rules! defaults {
    ($($t:ty),*) => {$(
        impl DefaultSerde for $t {
            fn serde() -> Arc<dyn Serde<Self>> {
                Arc::new(Builtin::<$t>::default())
            }
        }
    )*};
}

defaults!(String, (), Ignore, Vec<u8>, Bytes);

/// `Option<T>`: null is `None`, anything else is `T`'s.
impl<T: DefaultSerde> DefaultSerde for Option<T> {
    fn serde() -> Arc<dyn Serde<Self>> {
        Arc::new(Nullable(T::serde()))
    }
}

struct Nullable<T>(Arc<dyn Serde<T>>);

impl<T> Serde<Option<T>> for Nullable<T> {
    fn serialize(&self, value: &Option<T>) -> Result<Option<Bytes>, SerdeError> {
        match value {
            None => Ok(None),
            Some(value) => self.0.serialize(value),
        }
    }
    fn deserialize(&self, data: Option<&Bytes>) -> Result<Option<T>, SerdeError> {
        data.map(|d| self.0.deserialize(Some(d))).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: DefaultSerde + PartialEq + std::fmt::Debug>(value: T) {
        let serde = T::serde();
        let bytes = serde.serialize(&value).unwrap();
        assert_eq!(serde.deserialize(bytes.as_ref()).unwrap(), value);
    }

    #[test]
    fn defaults_round_trip_as_java_writes_them() {
        round_trip("héllo".to_owned());
        round_trip(-7i32);
        round_trip(1i64 << 40);
        round_trip(1.5f32);
        round_trip(-2.25f64);
        round_trip(());
        round_trip(vec![0u8, 255]);
        round_trip(Bytes::from_static(b"raw"));
        round_trip(Some(3i32));
        round_trip(None::<i32>);
        // Big-endian, as Java's IntegerSerializer.
        assert_eq!(i32::serde().serialize(&1).unwrap().unwrap().as_ref(), [0, 0, 0, 1]);
    }

    #[test]
    fn mismatches_are_errors() {
        let data = Bytes::from_static(b"abc");
        assert!(i32::serde().deserialize(Some(&data)).unwrap_err().0.contains("3 bytes"));
        assert!(<()>::serde().deserialize(Some(&data)).unwrap_err().0.contains("null was expected"));
        assert!(String::serde().deserialize(None).is_err());
        assert!(String::serde().deserialize(Some(&Bytes::from_static(&[0xff]))).unwrap_err().0.contains("UTF-8"));
        assert_eq!(Ignore::serde().deserialize(Some(&data)), Ok(Ignore));
        assert_eq!(Ignore::serde().deserialize(None), Ok(Ignore));
    }

    #[test]
    fn json_round_trips_and_says_what_is_wrong() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Click {
            page: String,
            ms: u32,
        }
        let serde = Json::<Click>::serde();
        let click = Click { page: "/a".into(), ms: 7 };
        let bytes = serde.serialize(&click).unwrap().unwrap();
        assert_eq!(&bytes[..], br#"{"page":"/a","ms":7}"#);
        assert_eq!(serde.deserialize(Some(&bytes)).unwrap(), click);
        let error = serde.deserialize(Some(&Bytes::from_static(b"{\"page\":3}"))).unwrap_err();
        assert!(error.0.contains("not the JSON of") && error.0.contains("Click"), "{error}");
        assert!(serde.deserialize(None).is_err(), "a null record is not a Click");
        let optional = Json::<Option<Click>>::serde();
        assert_eq!(optional.deserialize(None).unwrap(), None);
        assert_eq!(optional.serialize(&None).unwrap(), None, "None is a null record");
        assert!(serde.prepare(Some(&bytes)).is_none(), "nothing to look up");
    }
}
