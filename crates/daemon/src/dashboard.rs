//! The files of a program's live dashboard, all compiled into the binary: the page works
//! with no internet and needs no file beside the binary.
//!
//! A program provides its [`Page`] (its HTML and its script); the shared stylesheet and
//! script (polling, the "not answering" banner, number formats, the canvas charts) come from
//! `crates/daemon/assets/`. The page references them by relative URL (`assets/...`), so it
//! also works behind a reverse proxy that serves the admin port under a path.

/// A program's dashboard: the page at `GET /` and its own script at `GET /assets/page.js`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub html: &'static str,
    pub script: &'static str,
}

/// One file as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Where the page finds its files (relative to `/`), and the shared ones' contents.
pub const STYLESHEET: &str = "assets/dashboard.css";
pub const SHARED_SCRIPT: &str = "assets/dashboard.js";
pub const PAGE_SCRIPT: &str = "assets/page.js";

const CSS: &str = include_str!("../assets/dashboard.css");
const JS: &str = include_str!("../assets/dashboard.js");

const HTML_TYPE: &str = "text/html; charset=utf-8";
const CSS_TYPE: &str = "text/css; charset=utf-8";
const JS_TYPE: &str = "text/javascript; charset=utf-8";

/// The dashboard's routes, for the 404 answer's list.
pub const ENDPOINTS: [&str; 4] = [
    "GET /",
    "GET /assets/dashboard.css",
    "GET /assets/dashboard.js",
    "GET /assets/page.js",
];

/// Headers sent with every dashboard file. The policy lets the page load nothing but this
/// server's own files and talk to nothing else: a mistake in a page can never make it
/// fetch from the internet, and nothing can frame the admin port. `no-cache` makes a
/// browser left open across an upgrade revalidate instead of mixing versions.
pub const HEADERS: [(&str, &str); 3] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
];

/// The dashboard file at `path` (the request's path), if it is one.
pub fn file(page: &Page, path: &str) -> Option<File> {
    let (content_type, body) = match path.strip_prefix('/')? {
        "" => (HTML_TYPE, page.html),
        STYLESHEET => (CSS_TYPE, CSS),
        SHARED_SCRIPT => (JS_TYPE, JS),
        PAGE_SCRIPT => (JS_TYPE, page.script),
        _ => return None,
    };
    Some(File { content_type, body })
}

/// The URLs the page's HTML loads or links to (its `src` and `href` attributes), for tests
/// that check each is served.
pub fn references(html: &str) -> Vec<&str> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            let Some(end) = rest.find('"') else { break };
            found.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: Page = Page {
        html: "<link rel=\"stylesheet\" href=\"assets/dashboard.css\">\
               <script src=\"assets/dashboard.js\"></script><script src=\"assets/page.js\"></script>",
        script: "page();",
    };

    #[test]
    fn every_route_listed_is_a_file_and_the_page_loads_each_asset() {
        for endpoint in ENDPOINTS {
            let path = endpoint.trim_start_matches("GET ");
            assert!(file(&PAGE, path).is_some(), "{endpoint} is not served");
        }
        let loaded = references(PAGE.html);
        for asset in [STYLESHEET, SHARED_SCRIPT, PAGE_SCRIPT] {
            assert!(loaded.contains(&asset), "{asset} is not loaded: {loaded:?}");
        }
        assert_eq!(
            file(&PAGE, "/assets/page.js").map(|f| f.body),
            Some("page();")
        );
        assert_eq!(file(&PAGE, "/assets/other.js"), None);
        assert_eq!(file(&PAGE, "assets/page.js"), None);
    }

    /// The shared files define what the pages use from them.
    #[test]
    fn the_shared_files_are_the_dashboards() {
        assert!(JS.contains("const Dash =") && JS.contains("function poll("));
        assert!(CSS.contains("#banner") && CSS.contains("body.stale"));
    }

    #[test]
    fn references_are_every_src_and_href() {
        let html = "<a href=\"status\">s</a><img src=\"x.png\"><link href=\"a.css\">";
        assert_eq!(references(html), ["x.png", "status", "a.css"]);
    }
}
