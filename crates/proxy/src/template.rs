//! Path and rewrite templates (`/orders/{id}`, `/files/{*rest}`): the one parser that both the
//! routing table (for parameter names) and the forwarder (for rewrites) read them with.

/// One piece of a path or rewrite template.
pub(crate) enum Part {
    Literal(String),
    Param(String),
}

/// Splits a template into literal text and `{name}` / `{*name}` parameters, in order.
pub(crate) fn compile_template(t: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        parts.push(Part::Param(
            rest[open + 1..close].trim_start_matches('*').to_string(),
        ));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_templates_compile() {
        let parts = compile_template("/v2/{id}/items/{*rest}");
        let shown: Vec<String> = parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => format!("L({s})"),
                Part::Param(s) => format!("P({s})"),
            })
            .collect();
        assert_eq!(shown, ["L(/v2/)", "P(id)", "L(/items/)", "P(rest)"]);
    }
}
