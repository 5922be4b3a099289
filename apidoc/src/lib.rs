//! Holds a server to its one OpenAPI 3.1 document, for tests (the agent's, the
//! controller's): the document is whole (every `$ref` resolves, every schema
//! compiles), the routes it documents are the routes served (methods, path and
//! query parameters), and an answer a live server gave validates against the schema
//! documented for its route, status and content type.
//!
//! It knows nothing of any one server: each passes its route table in. It never
//! fetches anything: references are local (`#/...`), as the documents are written.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the document is not OpenAPI 3.1 (openapi: {0})")]
    Version(String),
    #[error("dangling $ref {reference} (at {at})")]
    DanglingRef { reference: String, at: String },
    #[error("schema {at} does not compile: {reason}")]
    BadSchema { at: String, reason: String },
    #[error("{0} is not documented")]
    Undocumented(String),
    #[error("{what} does not match the document: {errors:?}\nbody: {body}")]
    Mismatch {
        what: String,
        errors: Vec<String>,
        body: Value,
    },
}

/// An OpenAPI document, loaded and checked whole.
pub struct Document {
    doc: Value,
}

impl Document {
    /// Reads and checks `path`: JSON, OpenAPI 3.1, every `$ref` resolving and every
    /// schema under `components/schemas` compiling.
    pub fn load(path: impl AsRef<Path>) -> Result<Document, DocError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DocError::Read {
            path: shown.clone(),
            source,
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|source| DocError::Json {
            path: shown,
            source,
        })?;
        Document::new(doc)
    }

    pub fn new(doc: Value) -> Result<Document, DocError> {
        let version = doc["openapi"].as_str().unwrap_or("");
        if !version.starts_with("3.1") {
            return Err(DocError::Version(doc["openapi"].to_string()));
        }
        let d = Document { doc };
        d.check_refs(&d.doc, "#")?;
        if let Some(schemas) = d.doc["components"]["schemas"].as_object() {
            for name in schemas.keys() {
                d.validator(&d.named(name))
                    .map_err(|reason| DocError::BadSchema {
                        at: format!("#/components/schemas/{name}"),
                        reason,
                    })?;
            }
        }
        Ok(d)
    }

    pub fn value(&self) -> &Value {
        &self.doc
    }

    fn check_refs(&self, v: &Value, at: &str) -> Result<(), DocError> {
        match v {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str)
                    && self.pointer(r).is_none()
                {
                    return Err(DocError::DanglingRef {
                        reference: r.to_string(),
                        at: at.to_string(),
                    });
                }
                for (k, v) in map {
                    self.check_refs(v, &format!("{at}/{k}"))?;
                }
            }
            Value::Array(list) => {
                for (i, v) in list.iter().enumerate() {
                    self.check_refs(v, &format!("{at}/{i}"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn pointer(&self, reference: &str) -> Option<&Value> {
        self.doc.pointer(reference.strip_prefix('#')?)
    }

    /// `v`, or what it refers to (followed through chains of `$ref`).
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        for _ in 0..16 {
            match v
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| self.pointer(r))
            {
                Some(next) => v = next,
                None => break,
            }
        }
        v
    }

    /// Every documented operation as (METHOD, path template).
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for m in METHODS {
                if item.get(*m).is_some() {
                    out.insert((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    fn operation(&self, method: &str, template: &str) -> Result<&Value, DocError> {
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        if op.is_object() {
            Ok(op)
        } else {
            Err(DocError::Undocumented(format!("{method} {template}")))
        }
    }

    /// The names of an operation's parameters found `in` (`query`, `path`), the path
    /// item's own included.
    pub fn parameters(
        &self,
        method: &str,
        template: &str,
        in_: &str,
    ) -> Result<BTreeSet<String>, DocError> {
        let op = self.operation(method, template)?;
        let item = &self.doc["paths"][template];
        Ok(item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .map(|p| self.resolve(p))
            .filter(|p| p["in"] == in_)
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect())
    }

    /// Checks the documented operations against the routes served, both ways: each
    /// (method, template, query parameters) served is documented, with its
    /// template's path parameters and, when the server says which it takes, exactly
    /// those query parameters; nothing else is documented. Returns what differs, one
    /// line each (empty when they agree).
    pub fn differences<'a>(
        &self,
        served: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a [&'a str]>)>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut documented = self.operations();
        for (method, template, query) in served {
            if !documented.remove(&(method.to_string(), template.to_string())) {
                out.push(format!("served but not documented: {method} {template}"));
                continue;
            }
            if let Some(query) = query {
                let want: BTreeSet<String> = query.iter().map(|q| q.to_string()).collect();
                match self.parameters(method, template, "query") {
                    Ok(have) if have == want => {}
                    Ok(have) => out.push(format!(
                        "{method} {template}: query parameters served {want:?}, documented {have:?}"
                    )),
                    Err(e) => out.push(e.to_string()),
                }
            }
            let want: BTreeSet<String> = template
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_string)
                .collect();
            match self.parameters(method, template, "path") {
                Ok(have) if have == want => {}
                Ok(have) => out.push(format!(
                    "{method} {template}: path parameters {want:?}, documented {have:?}"
                )),
                Err(e) => out.push(e.to_string()),
            }
        }
        for (m, p) in documented {
            out.push(format!("documented but not served: {m} {p}"));
        }
        out
    }

    /// The schema documented for an answer (`None` when it has no body of that
    /// type); an error when the status is not documented for the route.
    pub fn response_schema(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
    ) -> Result<Option<Value>, DocError> {
        let op = self.operation(method, template)?;
        let response = op["responses"].get(status.to_string()).ok_or_else(|| {
            DocError::Undocumented(format!("{method} {template} answering {status}"))
        })?;
        let schema = self.resolve(response)["content"][content_type]["schema"].clone();
        Ok((!schema.is_null()).then(|| self.rooted(schema)))
    }

    /// A schema made standalone: the document's components carried along, so the
    /// `#/components/...` references inside it resolve against this root.
    fn rooted(&self, schema: Value) -> Value {
        let mut root = match schema {
            Value::Object(map) => map,
            other => {
                let mut m = serde_json::Map::new();
                m.insert("allOf".into(), Value::Array(vec![other]));
                m
            }
        };
        root.insert("components".into(), self.doc["components"].clone());
        Value::Object(root)
    }

    fn named(&self, name: &str) -> Value {
        self.rooted(serde_json::json!({ "$ref": format!("#/components/schemas/{name}") }))
    }

    fn validator(&self, schema: &Value) -> Result<jsonschema::Validator, String> {
        jsonschema::validator_for(schema).map_err(|e| e.to_string())
    }

    fn validate(&self, what: String, schema: &Value, body: &Value) -> Result<(), DocError> {
        let v = self
            .validator(schema)
            .map_err(|reason| DocError::BadSchema {
                at: what.clone(),
                reason,
            })?;
        let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DocError::Mismatch {
                what,
                errors,
                body: body.clone(),
            })
        }
    }

    /// Checks an answer: its status is documented for the route, and its body (if
    /// the document gives that content type a schema) validates.
    pub fn check(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
        body: &Value,
    ) -> Result<(), DocError> {
        match self.response_schema(method, template, status, content_type)? {
            Some(schema) => self.validate(
                format!("{method} {template} -> {status} ({content_type})"),
                &schema,
                body,
            ),
            None => Ok(()),
        }
    }

    /// Checks `body` against the component schema `name`.
    pub fn check_schema(&self, name: &str, body: &Value) -> Result<(), DocError> {
        if self.doc["components"]["schemas"].get(name).is_none() {
            return Err(DocError::Undocumented(format!("schema {name}")));
        }
        self.validate(format!("schema {name}"), &self.named(name), body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Document {
        Document::new(json!({
            "openapi": "3.1.0",
            "paths": {"/things/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "get": {
                    "parameters": [{"name": "full", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": {"200": {"description": "x", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                                  "204": {"description": "none"}}
                }
            }},
            "components": {
                "parameters": {"Id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}},
                "schemas": {"Thing": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn routes_are_compared_both_ways_with_their_parameters() {
        let d = doc();
        assert!(
            d.differences([("GET", "/things/{id}", Some(&["full"][..]))])
                .is_empty()
        );
        assert!(d.differences([("GET", "/things/{id}", None)]).is_empty());
        let diff = d.differences([
            ("GET", "/things/{id}", Some(&[][..])),
            ("POST", "/things", None),
        ]);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert_eq!(
            d.differences([]),
            ["documented but not served: GET /things/{id}"]
        );
    }

    #[test]
    fn answers_are_checked_against_their_status_and_schema() {
        let d = doc();
        assert!(
            d.check(
                "GET",
                "/things/{id}",
                200,
                "application/json",
                &json!({"n": 1})
            )
            .is_ok()
        );
        assert!(matches!(
            d.check(
                "GET",
                "/things/{id}",
                200,
                "application/json",
                &json!({"n": "one"})
            ),
            Err(DocError::Mismatch { .. })
        ));
        assert!(
            d.check("GET", "/things/{id}", 204, "application/json", &Value::Null)
                .is_ok()
        );
        assert!(matches!(
            d.check("GET", "/things/{id}", 500, "application/json", &Value::Null),
            Err(DocError::Undocumented(_))
        ));
        assert!(d.check_schema("Thing", &json!({"n": 2})).is_ok());
    }

    #[test]
    fn a_broken_document_is_refused() {
        let e = Document::new(
            json!({"openapi": "3.1.0", "paths": {"/x": {"get": {"responses": {"200": {"$ref": "#/nope"}}}}}}),
        );
        assert!(
            matches!(e, Err(DocError::DanglingRef { .. })),
            "{:?}",
            e.err()
        );
        assert!(matches!(
            Document::new(json!({"openapi": "2.0"})),
            Err(DocError::Version(_))
        ));
    }
}
