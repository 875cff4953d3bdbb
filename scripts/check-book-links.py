#!/usr/bin/env python3
"""Checks every internal link of the built book: the page (or file) it names
exists and so does its #anchor. mdBook warns only about some broken links;
`make docs` fails on any. Usage: check-book-links.py BOOK_HTML_DIR"""
import html.parser
import os
import sys
import urllib.parse


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key) and (key == "id" or tag == "a"):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) is not None:
                self.links.append((tag, attrs[key], self.getpos()[0]))


def parse(path, cache={}):
    if path not in cache:
        page = Page()
        with open(path, encoding="utf-8") as f:
            page.feed(f.read())
        cache[path] = page
    return cache[path]


def main(root):
    broken, checked = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            # 404.html links from the site root, which only a web server has.
            if not name.endswith(".html") or name == "404.html":
                continue
            page_path = os.path.join(folder, name)
            for tag, link, line in parse(page_path).links:
                url = urllib.parse.urlsplit(link)
                if url.scheme or link.startswith("//") or link in ("", "#"):
                    continue
                target = page_path
                if url.path:
                    target = os.path.normpath(os.path.join(folder, urllib.parse.unquote(url.path)))
                    if os.path.isdir(target):
                        target = os.path.join(target, "index.html")
                checked += 1
                where = f"{os.path.relpath(page_path, root)}:{line}: <{tag}> {link}"
                if not os.path.isfile(target):
                    broken.append(f"{where}: no such file")
                elif url.fragment and target.endswith(".html"):
                    if urllib.parse.unquote(url.fragment) not in parse(target).ids:
                        broken.append(f"{where}: no anchor #{url.fragment} in {os.path.relpath(target, root)}")
    for line in broken:
        print(line, file=sys.stderr)
    print(f"{checked} internal links checked, {len(broken)} broken", file=sys.stderr)
    return 1 if broken or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
