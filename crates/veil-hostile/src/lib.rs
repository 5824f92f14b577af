//! The hostile test suite (its tests are in `tests/`; this library is empty).
//!
//! Each test plays someone trying to learn more about one person than ε allows, with only
//! what the node lets its role do, against real nodes: an analyst writing hostile SQL, a
//! data scientist uploading hostile ONNX models (generated here: models that mix the rows of a
//! batch, fail on chosen rows, or are slow on chosen rows), and, for encrypted inference, a
//! hostile node answering a client. The main tool is a pair of neighbouring datasets, with and
//! without one person: everything the requester can observe (status, failure reason, error
//! code, result shape, released values within the noise) is compared between the two.
//! Statistical checks confirm that released values on neighbouring inputs stay within e^ε.
