//! The front end (`web-console/` at the repository root), embedded in the binary at build
//! time so the appliance ships one file.

/// One embedded file: name under `/static/`, content type, bytes.
pub type Asset = (&'static str, &'static str, &'static [u8]);

/// Every file of the front end.
pub const ASSETS: &[Asset] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web-console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web-console/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web-console/console.js"),
    ),
    (
        "operations.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web-console/operations.js"),
    ),
    (
        "viewer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web-console/viewer.js"),
    ),
    (
        "setup.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web-console/setup.js"),
    ),
    (
        "png16.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web-console/png16.js"),
    ),
];

/// The asset at a request path (`/` is `index.html`).
pub fn lookup(path: &str) -> Option<&'static Asset> {
    let name = match path {
        "/" => "index.html",
        p => p.strip_prefix("/static/")?,
    };
    ASSETS.iter().find(|(n, _, _)| *n == name)
}
