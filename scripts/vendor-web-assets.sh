#!/usr/bin/env bash
# Re-creates web/vendor/ from the npm registry (and folium's wheel), so that every script,
# stylesheet, font and icon the pages use is served by geo_service itself. The result is
# committed; run this only to upgrade. Needs npm and the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/../web"
out=vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() {  # fetch PACKAGE@VERSION DIR
  (cd "$work" && npm pack --silent "$1" >/dev/null)
  mkdir -p "$work/$2" && tar -xzf "$work"/$(ls -t "$work" | grep '\.tgz$' | head -1) -C "$work/$2" && rm "$work"/*.tgz
}
rm -rf "$out" && mkdir -p "$out"

fetch leaflet@1.9.3 leaflet
mkdir -p "$out/leaflet-1.9.3" && cp -r "$work/leaflet/package/dist/leaflet.js" "$work/leaflet/package/dist/leaflet.css" \
  "$work/leaflet/package/dist/images" "$work/leaflet/package/LICENSE" "$out/leaflet-1.9.3/"

fetch jquery@3.7.1 jquery
mkdir -p "$out/jquery-3.7.1" && cp "$work/jquery/package/dist/jquery.min.js" "$work/jquery/package/LICENSE.txt" "$out/jquery-3.7.1/"

fetch bootstrap@5.2.2 bootstrap5
mkdir -p "$out/bootstrap-5.2.2" && cp "$work/bootstrap5/package/dist/js/bootstrap.bundle.min.js" \
  "$work/bootstrap5/package/dist/css/bootstrap.min.css" "$work/bootstrap5/package/LICENSE" "$out/bootstrap-5.2.2/"

# folium's Map asks for Bootstrap 3's glyphicons rules: take them (and the fonts) from 3.4.1.
fetch bootstrap@3.4.1 bootstrap3
mkdir -p "$out/bootstrap-3.4.1/css" && cp -r "$work/bootstrap3/package/dist/fonts" "$out/bootstrap-3.4.1/" && \
  cp "$work/bootstrap3/package/LICENSE" "$out/bootstrap-3.4.1/"
python3 - "$work/bootstrap3/package/dist/css/bootstrap.css" > "$out/bootstrap-3.4.1/css/bootstrap-glyphicons.css" <<'PY'
import re, sys
css = open(sys.argv[1]).read()
keep = [m.group(0) for m in re.finditer(r"@font-face\s*{[^}]*}|\.glyphicon[^{]*{[^}]*}", css)]
print("\n".join(keep))
PY

fetch @fortawesome/fontawesome-free@6.2.0 fontawesome
mkdir -p "$out/fontawesome-free-6.2.0/css" && cp "$work/fontawesome/package/css/all.min.css" "$out/fontawesome-free-6.2.0/css/" && \
  cp -r "$work/fontawesome/package/webfonts" "$out/fontawesome-free-6.2.0/" && \
  cp "$work/fontawesome/package/LICENSE.txt" "$out/fontawesome-free-6.2.0/"

fetch leaflet.awesome-markers@2.0.5 awesome
mkdir -p "$out/leaflet.awesome-markers-2.0.5" && cp -r "$work/awesome/package/dist/"* "$out/leaflet.awesome-markers-2.0.5/" && \
  cp "$work/awesome/package/LICENSE" "$out/leaflet.awesome-markers-2.0.5/" 2>/dev/null || true
# folium's rotate stylesheet only defines .fa-rotate-N classes: generate it.
python3 -c "
print('\n'.join(f'.fa-rotate-{d}{{-webkit-transform:rotate({d}deg);transform:rotate({d}deg)}}' for d in range(0, 360)))
" > "$out/leaflet.awesome-markers-2.0.5/leaflet.awesome.rotate.min.css"

# Leaflet.VectorGrid ships no licence file: LICENSE.txt is its README's notice and the licences of
# the packages its bundle holds.
fetch leaflet.vectorgrid@1.3.0 vectorgrid
mkdir -p "$out/leaflet.vectorgrid-1.3.0"
cp "$work/vectorgrid/package/dist/Leaflet.VectorGrid.bundled.min.js" "$out/leaflet.vectorgrid-1.3.0/"
{ echo "Leaflet.VectorGrid 1.3.0 (npm leaflet.vectorgrid), dist/Leaflet.VectorGrid.bundled.min.js:"
  sed -n '/^## Legalese/,$p' "$work/vectorgrid/package/README.md" | sed 1d
  for dep in pbf@3.1.0 vector-tile@1.3.0 topojson-client@2.1.0 whatwg-fetch@2.0.3 geojson-vt@2.2.0 ieee754@1.1.8; do
    fetch "$dep" "dep-$dep" && echo "=== $dep (bundled)" && cat "$work/dep-$dep"/package/LICENSE*
  done; } > "$out/leaflet.vectorgrid-1.3.0/LICENSE.txt"

mkdir -p "$out/leaflet-heat" && cp "$(../.venv/bin/python -c 'import folium, os; print(os.path.dirname(folium.__file__))')/templates/leaflet_heat.min.js" "$out/leaflet-heat/"

fetch swagger-ui-dist@5.17.14 swagger
mkdir -p "$out/swagger-ui-5.17.14" && cp "$work/swagger/package/swagger-ui-bundle.js" "$work/swagger/package/swagger-ui.css" \
  "$work/swagger/package/favicon-32x32.png" "$work/swagger/package/LICENSE" "$out/swagger-ui-5.17.14/"
echo "vendored into $(pwd)/$out:"; du -sh "$out"/*
