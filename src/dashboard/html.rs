//! HTML for the dashboard's pages, in the CLI process: one layout, tables
//! and forms, and [`escape`], through which every piece of text that comes
//! from a queue, a message or a registry passes. No template engine and no
//! script: the pages are small and the escaping is in one place.

use std::fmt::Write;

/// Text made safe for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string component (`?queue=...`), percent-encoded.
pub(crate) fn query(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// At most `n` characters of `text`, with `…` when cut.
pub(crate) fn first_chars(text: &str, n: usize) -> String {
    let mut cut: String = text.chars().take(n).collect();
    if text.chars().nth(n).is_some() {
        cut.push('…');
    }
    cut
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}\
header a{color:#cfd6e4;text-decoration:none}header a.here{color:#fff;font-weight:600}\
header b{margin-right:16px}main{padding:16px 24px}\
table{border-collapse:collapse;background:#fff;width:100%;margin:8px 0 16px}\
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6eb;vertical-align:top}\
th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
pre{background:#fff;border:1px solid #e3e6eb;padding:10px;white-space:pre-wrap;word-break:break-all}\
.flash{background:#e7f5ea;border:1px solid #9fd3ab;padding:8px 12px}\
.error{background:#fdecea;border:1px solid #f1a9a0;padding:8px 12px}\
button{padding:5px 12px;margin-right:8px;cursor:pointer}button.danger{color:#a4161a}\
form.inline{display:inline}.muted{color:#6b7383}code{font-size:13px}";

/// A whole page: `title`, the navigation with `here` marked, and `body`.
pub(crate) fn page(title: &str, here: &str, refresh: bool, body: &str) -> String {
    let nav: String = [("/", "Queues"), ("/jobs", "Jobs"), ("/modules", "Modules")]
        .iter()
        .map(|(href, label)| {
            let class = if *label == here {
                " class=\"here\""
            } else {
                ""
            };
            format!("<a href=\"{href}\"{class}>{label}</a>")
        })
        .collect();
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>wasm-jobs · {}</title><style>{STYLE}</style></head>\
         <body><header><b>wasm-jobs</b>{nav}</header><main>{body}</main></body></html>",
        escape(title)
    )
}

/// A table: escaped headers, and rows of cells that are already HTML.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>], numeric: &[usize]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric.contains(&i) {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A POST form with the CSRF token, hidden `fields` and one button.
pub(crate) fn post_form(
    action: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    button: &str,
    danger: bool,
) -> String {
    let mut out = format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(action),
        escape(csrf)
    );
    for (name, value) in fields {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(name),
            escape(value)
        );
    }
    let class = if danger { " class=\"danger\"" } else { "" };
    let _ = write!(
        out,
        "<button type=\"submit\"{class}>{}</button></form>",
        escape(button)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(query("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(first_chars("héllo", 2), "hé…");
        assert_eq!(first_chars("hé", 2), "hé");
        let form = post_form("/act", "t\"", &[("id", "<x>")], "Go <now>", true);
        assert!(form.contains("value=\"t&quot;\""), "{form}");
        assert!(form.contains("value=\"&lt;x&gt;\""), "{form}");
        assert!(form.contains(">Go &lt;now&gt;</button>"), "{form}");
        let t = table(&["<h>"], &[vec!["<b>ok</b>".into()]], &[]);
        assert!(t.contains("<th>&lt;h&gt;</th><"), "{t}");
        assert!(
            t.contains("<td><b>ok</b></td>"),
            "cells are HTML already: {t}"
        );
    }
}
