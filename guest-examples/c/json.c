#include "json.h"
#include <stdlib.h>
#include <string.h>

typedef struct { const char *s; size_t len, pos; const char *err; } P;

static void ws(P *p) {
  while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                             p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
    p->pos++;
}
static bool fail(P *p, const char *why) { if (!p->err) p->err = why; return false; }
static bool lit(P *p, const char *w) {
  size_t n = strlen(w);
  if (p->len - p->pos < n || memcmp(p->s + p->pos, w, n) != 0) return fail(p, "invalid literal");
  p->pos += n; return true;
}
static int hexv(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
static void put_utf8(char *o, size_t *n, unsigned cp) {
  if (cp < 0x80) o[(*n)++] = (char)cp;
  else if (cp < 0x800) { o[(*n)++] = (char)(0xC0 | cp >> 6); o[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) { o[(*n)++] = (char)(0xE0 | cp >> 12); o[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
  else { o[(*n)++] = (char)(0xF0 | cp >> 18); o[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F)); o[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
}
static bool hex4(P *p, unsigned *cp) {
  if (p->len - p->pos < 4) return fail(p, "short \\u escape");
  *cp = 0;
  for (int i = 0; i < 4; i++) {
    int v = hexv(p->s[p->pos++]);
    if (v < 0) return fail(p, "bad \\u escape");
    *cp = *cp << 4 | (unsigned)v;
  }
  return true;
}
/* Parses a string; when out != NULL stores a malloc'd decoded copy. */
static bool str(P *p, char **out) {
  if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, "expected a string");
  p->pos++;
  char *o = malloc(p->len - p->pos + 1); /* decoded is never longer */
  size_t n = 0;
  if (!o) return fail(p, "out of memory");
  while (p->pos < p->len) {
    unsigned char c = (unsigned char)p->s[p->pos++];
    if (c == '"') { o[n] = 0; if (out) *out = o; else free(o); return true; }
    if (c < 0x20) break;
    if (c != '\\') { o[n++] = (char)c; continue; }
    if (p->pos >= p->len) break;
    char e = p->s[p->pos++];
    unsigned cp;
    switch (e) {
      case '"': case '\\': case '/': o[n++] = e; break;
      case 'b': o[n++] = '\b'; break; case 'f': o[n++] = '\f'; break;
      case 'n': o[n++] = '\n'; break; case 'r': o[n++] = '\r'; break;
      case 't': o[n++] = '\t'; break;
      case 'u':
        if (!hex4(p, &cp)) { free(o); return false; }
        if (cp >= 0xD800 && cp < 0xDC00 && p->len - p->pos >= 6 &&
            p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
          unsigned lo; p->pos += 2;
          if (!hex4(p, &lo)) { free(o); return false; }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        put_utf8(o, &n, cp); break;
      default: free(o); return fail(p, "bad escape");
    }
  }
  free(o);
  return fail(p, "unterminated string");
}
static bool num(P *p, double *out) {
  const char *start = p->s + p->pos;
  size_t i = p->pos;
  if (i < p->len && p->s[i] == '-') i++;
  if (i >= p->len || p->s[i] < '0' || p->s[i] > '9') return fail(p, "expected a value");
  while (i < p->len && ((p->s[i] >= '0' && p->s[i] <= '9') || p->s[i] == '.' ||
                        p->s[i] == 'e' || p->s[i] == 'E' || p->s[i] == '+' || p->s[i] == '-'))
    i++;
  char buf[64]; size_t n = i - p->pos;
  if (n >= sizeof buf) return fail(p, "number too long");
  memcpy(buf, start, n); buf[n] = 0;
  char *end; double v = strtod(buf, &end);
  if (end != buf + n) return fail(p, "bad number");
  p->pos = i;
  if (out) *out = v;
  return true;
}
static bool value(P *p, int depth);
static bool container(P *p, int depth, char close) {
  p->pos++; ws(p);
  if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return true; }
  for (;;) {
    if (close == '}') { ws(p); if (!str(p, NULL)) return false; ws(p); if (!lit(p, ":")) return false; }
    if (!value(p, depth + 1)) return false;
    ws(p);
    if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; ws(p); continue; }
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return true; }
    return fail(p, "expected ',' or a closing bracket");
  }
}
static bool value(P *p, int depth) {
  if (depth > 64) return fail(p, "nested too deep");
  ws(p);
  if (p->pos >= p->len) return fail(p, "unexpected end of input");
  switch (p->s[p->pos]) {
    case '{': return container(p, depth, '}');
    case '[': return container(p, depth, ']');
    case '"': return str(p, NULL);
    case 't': return lit(p, "true");
    case 'f': return lit(p, "false");
    case 'n': return lit(p, "null");
    default: return num(p, NULL);
  }
}

const char *job_request_parse(const char *s, size_t len, job_request_t *r, size_t *err_at) {
  P p = {s, len, 0, NULL};
  memset(r, 0, sizeof *r);
  ws(&p);
  if (p.pos >= len || s[p.pos] != '{') { fail(&p, "expected an object"); goto bad; }
  p.pos++; ws(&p);
  if (p.pos < len && s[p.pos] == '}') { p.pos++; goto end; }
  for (;;) {
    char *key = NULL;
    ws(&p);
    if (!str(&p, &key)) goto bad;
    ws(&p);
    if (!lit(&p, ":")) { free(key); goto bad; }
    ws(&p);
    char **slot = !strcmp(key, "op") ? &r->op : !strcmp(key, "text") ? &r->text
                : !strcmp(key, "reason") ? &r->reason : !strcmp(key, "url") ? &r->url : NULL;
    bool ok;
    if (slot && p.pos < len && s[p.pos] == '"') { free(*slot); *slot = NULL; ok = str(&p, slot); }
    else if (!strcmp(key, "delay") && p.pos < len && s[p.pos] != '"' && s[p.pos] != '{' &&
             s[p.pos] != '[' && s[p.pos] != 't' && s[p.pos] != 'f' && s[p.pos] != 'n') {
      ok = num(&p, &r->delay); r->has_delay = ok;
    } else ok = value(&p, 1);
    free(key);
    if (!ok) goto bad;
    ws(&p);
    if (p.pos < len && s[p.pos] == ',') { p.pos++; continue; }
    if (p.pos < len && s[p.pos] == '}') { p.pos++; break; }
    fail(&p, "expected ',' or '}'"); goto bad;
  }
end:
  ws(&p);
  if (p.pos != len) { fail(&p, "trailing characters"); goto bad; }
  return NULL;
bad:
  job_request_free(r);
  *err_at = p.pos;
  return p.err ? p.err : "syntax error";
}

void job_request_free(job_request_t *r) {
  free(r->op); free(r->text); free(r->reason); free(r->url);
  r->op = r->text = r->reason = r->url = NULL;
}
