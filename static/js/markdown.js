/*
 * markdown.js: render untrusted Markdown (model output) as safe HTML. Shared by the run page and the playground.
 *
 * Needs, loaded before it:
 *   static/vendor/marked/marked.umd.js        (window.marked, v18)
 *   static/vendor/dompurify/purify.min.js     (window.DOMPurify, v3)
 *
 * API:
 *   window.renderMarkdown(element, text)
 *       Replaces the children of `element` with `text` rendered as GitHub-flavoured Markdown.
 *       - Raw HTML in the Markdown (`<script>`, `<img onerror=...>`, ...) is shown as text, never parsed.
 *       - Markdown images become links (no request leaves the page because a model said so).
 *       - The HTML is then passed through DOMPurify.sanitize (which drops javascript: URLs and the like).
 *       - Code blocks and code spans are kept (<pre><code class="language-x">).
 *       - Links open in a new tab with rel="noopener noreferrer".
 *       Cheap enough to call again with the whole text as a stream grows (it re-renders from scratch).
 *       If marked or DOMPurify is missing, the text is shown as plain text (element.textContent).
 *   window.renderMarkdownIn(root = document)
 *       Renders every element marked `data-markdown` under `root` from its own text content (the raw
 *       answer, escaped by the server), once: it sets `data-markdown="rendered"` afterwards.
 */
(function () {
  "use strict";

  var ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) { return ESCAPES[c]; });
  }

  var parser = null;

  function getParser() {
    if (parser || !window.marked || !window.marked.Marked) return parser;
    parser = new window.marked.Marked({
      gfm: true,
      breaks: true,
      renderer: {
        // Block and inline raw HTML: shown as the text the model wrote.
        html: function (token) {
          var text = escapeHtml(token.text);
          return token.block ? "<p>" + text.replace(/\n+$/, "") + "</p>\n" : text;
        },
        image: function (token) {
          var label = escapeHtml(token.text || token.href);
          return '<a href="' + escapeHtml(token.href) + '" title="image: ' + escapeHtml(token.href) + '">🖼 ' + label + "</a>";
        },
      },
    });
    return parser;
  }

  function renderMarkdown(element, text) {
    text = text == null ? "" : String(text);
    var md = getParser();
    if (!md || !window.DOMPurify) {
      element.textContent = text;
      return;
    }
    var html = md.parse(text, { async: false });
    var fragment = window.DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true });
    fragment.querySelectorAll("a[href]").forEach(function (link) {
      link.setAttribute("target", "_blank");
      link.setAttribute("rel", "noopener noreferrer");
    });
    element.replaceChildren(fragment);
  }

  function renderMarkdownIn(root) {
    (root || document).querySelectorAll("[data-markdown]:not([data-markdown='rendered'])").forEach(function (el) {
      renderMarkdown(el, el.textContent);
      el.setAttribute("data-markdown", "rendered");
    });
  }

  window.renderMarkdown = renderMarkdown;
  window.renderMarkdownIn = renderMarkdownIn;
})();
