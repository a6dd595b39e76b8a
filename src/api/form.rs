//! Reading `multipart/form-data` request bodies within limits.
//!
//! The body is streamed through `multer` with a cap on the whole stream and on each part, so an
//! oversized request is refused after at most the limit was read (a `Content-Length` over it is
//! refused before reading anything). Image parts stay bytes; every other part must be UTF-8 text.
//! After a refusal the rest of the body is read and discarded for a bounded time and amount
//! ("lingering"), so the client, still sending, gets to read the error instead of a reset.
//! Receiving the whole body is bounded in time (`server.request_deadline`): a stalled sender
//! gets 408.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http_body_util::BodyExt;

use super::{BoxError, RequestBody};
use crate::error::{Classify, ErrorClass};

/// The name of the image parts.
pub const IMAGE: &str = "image";

/// Text parts (parameters, the batch `params` JSON) are small; this bounds each.
const MAX_TEXT_BYTES: u64 = 256 * 1024;

/// How long a refused body is drained before the response, and how much of it: up to
/// `LINGER_FACTOR` times the body limit, so a slightly oversized upload ends cleanly while a
/// huge one is cut off.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_FACTOR: u64 = 4;

/// What `read` accepts.
#[derive(Clone, Copy, Debug)]
pub struct FormLimits {
    /// The whole body.
    pub body_bytes: u64,
    /// Each image part.
    pub image_bytes: u64,
    /// Image parts at most.
    pub max_images: usize,
    /// Time allowed for receiving the whole body (a slow sender must not hold a slot forever).
    pub read_timeout: Duration,
}

/// A read form: image parts in order, other parts as `(name, text)` in order.
#[derive(Debug, Default)]
pub struct Form {
    pub images: Vec<Bytes>,
    pub fields: Vec<(String, String)>,
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum FormError {
    #[error("expected a multipart/form-data body (Content-Type with a boundary)")]
    NotMultipart,
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("an `image` part is larger than {0} bytes")]
    ImageTooLarge(u64),
    #[error("more than {0} `image` parts in one request")]
    TooManyImages(usize),
    #[error("part `{0}` is larger than {MAX_TEXT_BYTES} bytes")]
    TextTooLarge(String),
    #[error("part `{0}` is not UTF-8 text")]
    NotText(String),
    #[error("malformed multipart body: {0}")]
    Malformed(String),
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
}

impl Classify for FormError {
    fn class(&self) -> ErrorClass {
        match self {
            FormError::NotMultipart => ErrorClass::Unsupported,
            FormError::BodyTooLarge(_) | FormError::ImageTooLarge(_) | FormError::TooManyImages(_) => ErrorClass::TooLarge,
            FormError::TextTooLarge(_) => ErrorClass::TooLarge,
            FormError::NotText(_) | FormError::Malformed(_) => ErrorClass::BadRequest,
            FormError::TimedOut(_) => ErrorClass::RequestTimeout,
        }
    }
}

/// Reads the whole form, or refuses it as soon as a limit is passed.
pub async fn read<B: RequestBody>(head: &Parts, body: B, limits: FormLimits) -> Result<Form, FormError> {
    let mut body = Box::pin(body);
    let result = match boundary(head) {
        None => Err(FormError::NotMultipart),
        Some(_) if content_length(head).is_some_and(|n| n > limits.body_bytes) => Err(FormError::BodyTooLarge(limits.body_bytes)),
        Some(boundary) => tokio::time::timeout(limits.read_timeout, parse(&mut body, boundary, limits))
            .await
            .unwrap_or(Err(FormError::TimedOut(limits.read_timeout))),
    };
    if matches!(result, Err(FormError::TimedOut(_))) {
        return result; // a stalled sender gets no more of our time
    }
    if result.is_err() {
        linger(&mut body, limits.body_bytes.saturating_mul(LINGER_FACTOR)).await;
    }
    result
}

fn boundary(head: &Parts) -> Option<String> {
    let ct = head.headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    multer::parse_boundary(ct).ok()
}

fn content_length(head: &Parts) -> Option<u64> {
    head.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn parse<B: RequestBody>(body: &mut Pin<Box<B>>, boundary: String, limits: FormLimits) -> Result<Form, FormError> {
    let stream = futures::stream::unfold(body, |b| async move {
        loop {
            match b.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some((Ok::<Bytes, BoxError>(data), b)),
                    Err(_trailers) => continue,
                },
                Err(e) => return Some((Err(e.into()), b)),
            }
        }
    });
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limits.body_bytes)
            .per_field(MAX_TEXT_BYTES)
            .for_field(IMAGE, limits.image_bytes),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| classify(e, limits))? {
        let name = field.name().unwrap_or("").to_string();
        if name == IMAGE {
            if form.images.len() == limits.max_images {
                return Err(FormError::TooManyImages(limits.max_images));
            }
            form.images.push(field.bytes().await.map_err(|e| classify(e, limits))?);
        } else {
            let bytes = field.bytes().await.map_err(|e| classify(e, limits))?;
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| FormError::NotText(printable(&name)))?;
            form.fields.push((name, text));
        }
    }
    Ok(form)
}

fn classify(e: multer::Error, limits: FormLimits) -> FormError {
    match e {
        multer::Error::StreamSizeExceeded { .. } => FormError::BodyTooLarge(limits.body_bytes),
        multer::Error::FieldSizeExceeded { field_name, .. } => match field_name.as_deref() {
            Some(IMAGE) => FormError::ImageTooLarge(limits.image_bytes),
            other => FormError::TextTooLarge(printable(other.unwrap_or(""))),
        },
        multer::Error::StreamReadFailed(_) => FormError::Malformed("the request body could not be read".into()),
        other => FormError::Malformed(other.to_string()),
    }
}

/// Part names are echoed in errors: keep them short and printable.
pub fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Reads and discards what is left of a refused body, within `LINGER_TIME` and `budget` bytes.
async fn linger<B: RequestBody>(body: &mut Pin<Box<B>>, budget: u64) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > budget {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn request(content_type: &str, body: &'static str) -> (Parts, Full<Bytes>) {
        let req = http::Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        req.into_parts()
    }

    const LIMITS: FormLimits = FormLimits { body_bytes: 1000, image_bytes: 100, max_images: 2, read_timeout: Duration::from_secs(5) };

    const BODY: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNGDATA\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na white cat\r\n--XyZ--\r\n";

    #[tokio::test]
    async fn reads_images_and_text_fields_in_order() {
        let (head, body) = request("multipart/form-data; boundary=XyZ", BODY);
        let form = read(&head, body, LIMITS).await.unwrap();
        assert_eq!(form.images, vec![Bytes::from_static(b"PNGDATA")]);
        assert_eq!(form.fields, vec![("prompt".to_string(), "a white cat".to_string())]);
    }

    #[tokio::test]
    async fn limits_and_content_type_are_enforced() {
        let (head, body) = request("application/json", BODY);
        assert_eq!(read(&head, body, LIMITS).await.unwrap_err(), FormError::NotMultipart);
        let (head, body) = request("multipart/form-data; boundary=XyZ", BODY);
        let small = FormLimits { body_bytes: 50, ..LIMITS };
        assert_eq!(read(&head, body, small).await.unwrap_err(), FormError::BodyTooLarge(50));
        let (head, body) = request("multipart/form-data; boundary=XyZ", BODY);
        let tiny_image = FormLimits { image_bytes: 3, ..LIMITS };
        assert_eq!(read(&head, body, tiny_image).await.unwrap_err(), FormError::ImageTooLarge(3));
        let (head, body) = request("multipart/form-data; boundary=XyZ", BODY);
        let no_images = FormLimits { max_images: 0, ..LIMITS };
        assert_eq!(read(&head, body, no_images).await.unwrap_err(), FormError::TooManyImages(0));
        let (head, body) = request("multipart/form-data; boundary=XyZ", "--XyZ\r\nContent-Disposition: form-da");
        assert!(matches!(read(&head, body, LIMITS).await.unwrap_err(), FormError::Malformed(_)));
    }
}
