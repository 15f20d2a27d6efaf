// Safetensors reader. The header is untrusted JSON: every field is type-checked, sizes are computed in
// 64-bit with overflow checks, and the tensors must tile the data section exactly (no gaps, no
// overlaps), as the format requires, before any data pointer is handed out.
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mt_safetensors {
    const uint8_t *base; // whole file (mapping or caller's buffer)
    size_t size;
    bool mapped;
    char *path;
    cJSON *root;                 // parsed header; tensor names point into it
    const cJSON *meta;           // "__metadata__" or NULL
    mt_st_tensor *tensors;       // sorted by data offset
    const mt_st_tensor **byname; // sorted by name
    int64_t n;
};

// Integers in JSON are doubles here; 2^53 is the largest range in which every integer is exact.
#define ST_MAX_INT 9007199254740992.0

static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_INT) || floor(d) != d) return false;
    *out = (uint64_t)d;
    return true;
}

// Renders a JSON value for an error message (short, never fails).
static const char *json_brief(const cJSON *v, char *buf, size_t cap) {
    if (!v) return "nothing";
    if (cJSON_IsNumber(v))
        snprintf(buf, cap, "%.17g", v->valuedouble);
    else if (cJSON_IsString(v))
        snprintf(buf, cap, "\"%.40s\"", v->valuestring);
    else if (cJSON_IsArray(v))
        snprintf(buf, cap, "an array");
    else if (cJSON_IsObject(v))
        snprintf(buf, cap, "an object");
    else if (cJSON_IsBool(v))
        snprintf(buf, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else
        snprintf(buf, cap, "null");
    return buf;
}

static int cmp_offset(const void *a, const void *b) {
    const mt_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    const mt_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

// Parses one tensor entry into `t`; `data` is the start of the data section of `data_size` bytes.
static mt_status parse_tensor(const char *label, const cJSON *e, const uint8_t *data, uint64_t data_size,
                              mt_st_tensor *t) {
    const char *name = e->string;
    char b[64];
    if (!cJSON_IsObject(e))
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': entry is %s, not an object", label, name,
                       json_brief(e, b, sizeof b));
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!dt) return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': missing \"dtype\"", label, name);
    if (!sh) return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': missing \"shape\"", label, name);
    if (!of) return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': missing \"data_offsets\"", label, name);
    if (!cJSON_IsString(dt))
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': dtype is %s, not a string", label, name,
                       json_brief(dt, b, sizeof b));

    mt_dtype dtype;
    uint64_t esize;
    if (!strcmp(dt->valuestring, "F32"))
        dtype = MT_F32, esize = 4;
    else if (!strcmp(dt->valuestring, "F16"))
        dtype = MT_F16, esize = 2;
    else if (!strcmp(dt->valuestring, "BF16"))
        dtype = MT_BF16, esize = 2;
    else
        return mt_fail(MT_ERR_UNSUPPORTED,
                       "%s: tensor '%.80s': dtype \"%.32s\" is not supported (F32, F16, BF16)", label, name,
                       dt->valuestring);

    if (!cJSON_IsArray(sh))
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': shape is %s, not an array", label, name,
                       json_brief(sh, b, sizeof b));
    int rank = cJSON_GetArraySize(sh);
    if (rank > MT_MAX_DIMS)
        return mt_fail(MT_ERR_UNSUPPORTED, "%s: tensor '%.80s': rank %d exceeds %d", label, name, rank,
                       MT_MAX_DIMS);
    uint64_t dims[MT_MAX_DIMS], nbytes = esize;
    bool overflow = false;
    for (int i = 0; i < rank; i++) {
        const cJSON *d = cJSON_GetArrayItem(sh, i);
        if (!json_uint(d, &dims[i]))
            return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': shape[%d] is %s, not a non-negative integer",
                           label, name, i, json_brief(d, b, sizeof b));
        if (dims[i] != 0 && nbytes > UINT64_MAX / dims[i])
            overflow = true;
        else
            nbytes *= dims[i];
    }
    // A zero dimension makes the tensor empty whatever the other dimensions are.
    for (int i = 0; i < rank; i++)
        if (dims[i] == 0) overflow = false, nbytes = 0;
    if (overflow)
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': shape overflows 64-bit size", label, name);

    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2)
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': data_offsets is %s, not [begin, end]", label, name,
                       json_brief(of, b, sizeof b));
    uint64_t begin, end;
    if (!json_uint(cJSON_GetArrayItem(of, 0), &begin) || !json_uint(cJSON_GetArrayItem(of, 1), &end))
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': data_offsets are not non-negative integers", label,
                       name);
    if (begin > end)
        return mt_fail(MT_ERR_FORMAT, "%s: tensor '%.80s': data_offsets [%llu, %llu] end before they begin",
                       label, name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return mt_fail(MT_ERR_FORMAT,
                       "%s: tensor '%.80s': data_offsets [%llu, %llu] beyond the data section (%llu bytes)",
                       label, name, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)data_size);
    if (end - begin != nbytes)
        return mt_fail(MT_ERR_FORMAT,
                       "%s: tensor '%.80s': shape needs %llu bytes of %s but data_offsets span %llu", label,
                       name, (unsigned long long)nbytes, dt->valuestring, (unsigned long long)(end - begin));

    // Outermost-first shape -> ne[] innermost first; a scalar is a 1-element vector.
    int64_t ne[MT_MAX_DIMS] = {1, 1, 1, 1};
    for (int i = 0; i < rank; i++) ne[i] = (int64_t)dims[rank - 1 - i];
    mt_status s = mt_tensor_init(&t->t, dtype, rank ? rank : 1, ne, (void *)(data + begin));
    if (s != MT_OK) return mt_fail(s, "%s: tensor '%.80s': %s", label, name, mt_last_error());
    t->name = name;
    t->t.name = name;
    t->offset = begin;
    t->nbytes = nbytes;
    return MT_OK;
}

static mt_status parse(mt_safetensors *s) {
    const char *label = s->path;
    if (s->size < 8)
        return mt_fail(MT_ERR_FORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length", label,
                       s->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | s->base[i];
    if (hlen > MT_ST_MAX_HEADER)
        return mt_fail(MT_ERR_FORMAT, "%s: header length %llu exceeds the %llu-byte limit", label,
                       (unsigned long long)hlen, (unsigned long long)MT_ST_MAX_HEADER);
    if (hlen > s->size - 8)
        return mt_fail(MT_ERR_FORMAT, "%s: header length %llu goes beyond the end of the file (%zu bytes)",
                       label, (unsigned long long)hlen, s->size);
    const char *hdr = (const char *)s->base + 8;
    if (hlen < 2 || hdr[0] != '{')
        return mt_fail(MT_ERR_FORMAT, "%s: header does not start with a JSON object ('{')", label);

    const char *end = NULL;
    s->root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!s->root) {
        long at = end && end >= hdr && end <= hdr + hlen ? (long)(end - hdr) : -1;
        return mt_fail(MT_ERR_FORMAT, "%s: header is not valid JSON (near byte %ld of %llu)", label, at,
                       (unsigned long long)hlen);
    }
    // The format pads the header with spaces; anything else after the object is garbage.
    for (const char *p = end; p < hdr + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return mt_fail(MT_ERR_FORMAT, "%s: unexpected byte 0x%02x after the header object at byte %ld",
                           label, (unsigned char)*p, (long)(p - hdr));
    if (!cJSON_IsObject(s->root)) return mt_fail(MT_ERR_FORMAT, "%s: header is not a JSON object", label);

    const uint8_t *data = s->base + 8 + hlen;
    uint64_t data_size = (uint64_t)s->size - 8 - hlen;
    int64_t n = 0;
    for (const cJSON *e = s->root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (s->meta) return mt_fail(MT_ERR_FORMAT, "%s: \"__metadata__\" appears twice", label);
            if (!cJSON_IsObject(e))
                return mt_fail(MT_ERR_FORMAT, "%s: \"__metadata__\" is not an object", label);
            for (const cJSON *m = e->child; m; m = m->next)
                if (!cJSON_IsString(m))
                    return mt_fail(MT_ERR_FORMAT, "%s: __metadata__ value '%.80s' is not a string", label,
                                   m->string);
            s->meta = e;
        } else {
            n++;
        }
    }
    s->tensors = mt_calloc((size_t)n, sizeof *s->tensors, "safetensors tensor table");
    s->byname = mt_calloc((size_t)n, sizeof *s->byname, "safetensors name index");
    if (!s->tensors || !s->byname) return MT_ERR_NOMEM;
    for (const cJSON *e = s->root->child; e; e = e->next) {
        if (e == s->meta) continue;
        MT_TRY(parse_tensor(label, e, data, data_size, &s->tensors[s->n]));
        s->n++;
    }

    // Tensors must cover the data section exactly, in offset order.
    qsort(s->tensors, (size_t)n, sizeof *s->tensors, cmp_offset);
    uint64_t pos = 0;
    const mt_st_tensor *prev = NULL;
    for (int64_t i = 0; i < n; i++) {
        const mt_st_tensor *t = &s->tensors[i];
        if (t->offset < pos)
            return mt_fail(MT_ERR_FORMAT, "%s: tensors '%.80s' and '%.80s' overlap at data offset %llu",
                           label, prev->name, t->name, (unsigned long long)t->offset);
        if (t->offset > pos)
            return mt_fail(MT_ERR_FORMAT, "%s: data bytes [%llu, %llu) belong to no tensor", label,
                           (unsigned long long)pos, (unsigned long long)t->offset);
        pos = t->offset + t->nbytes;
        prev = t;
    }
    if (pos != data_size)
        return mt_fail(MT_ERR_FORMAT, "%s: data section has %llu bytes but the tensors cover %llu", label,
                       (unsigned long long)data_size, (unsigned long long)pos);

    for (int64_t i = 0; i < n; i++) s->byname[i] = &s->tensors[i];
    qsort(s->byname, (size_t)n, sizeof *s->byname, cmp_name);
    for (int64_t i = 1; i < n; i++)
        if (!strcmp(s->byname[i - 1]->name, s->byname[i]->name))
            return mt_fail(MT_ERR_FORMAT, "%s: tensor name '%.80s' appears twice", label, s->byname[i]->name);
    return MT_OK;
}

static mt_status finish_open(mt_safetensors *s, mt_safetensors **out) {
    mt_status st = parse(s);
    if (st != MT_OK) {
        mt_safetensors_close(s);
        return st;
    }
    *out = s;
    return MT_OK;
}

mt_status mt_safetensors_open_memory(const void *data, size_t size, const char *label, mt_safetensors **out) {
    *out = NULL;
    mt_safetensors *s = mt_calloc(1, sizeof *s, "safetensors handle");
    if (!s) return MT_ERR_NOMEM;
    s->base = data;
    s->size = size;
    s->path = strdup(label ? label : "<memory>");
    if (!s->path) {
        free(s);
        return mt_fail(MT_ERR_NOMEM, "cannot copy safetensors label");
    }
    return finish_open(s, out);
}

mt_status mt_safetensors_open(const char *path, mt_safetensors **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mt_fail(MT_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mt_fail(MT_ERR_IO, "%s is not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return mt_fail(MT_ERR_FORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length", path,
                       size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return mt_fail(MT_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    mt_safetensors *s = mt_calloc(1, sizeof *s, "safetensors handle");
    if (!s || !(s->path = strdup(path))) {
        munmap(map, size);
        free(s);
        return mt_fail(MT_ERR_NOMEM, "cannot allocate safetensors handle for %s", path);
    }
    s->base = map;
    s->size = size;
    s->mapped = true;
    return finish_open(s, out);
}

void mt_safetensors_close(mt_safetensors *s) {
    if (!s) return;
    if (s->mapped) munmap((void *)s->base, s->size);
    cJSON_Delete(s->root);
    free(s->tensors);
    free(s->byname);
    free(s->path);
    free(s);
}

size_t mt_safetensors_file_size(const mt_safetensors *s) {
    return s->size;
}
const char *mt_safetensors_path(const mt_safetensors *s) {
    return s->path;
}
int64_t mt_safetensors_n_tensors(const mt_safetensors *s) {
    return s->n;
}

const mt_st_tensor *mt_safetensors_tensor_at(const mt_safetensors *s, int64_t i) {
    return i >= 0 && i < s->n ? &s->tensors[i] : NULL;
}

const mt_st_tensor *mt_safetensors_tensor_by_name(const mt_safetensors *s, const char *name) {
    int64_t lo = 0, hi = s->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->byname[mid]->name, name);
        if (c == 0) return s->byname[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *mt_safetensors_metadata(const mt_safetensors *s, const char *key) {
    const cJSON *v = s->meta ? cJSON_GetObjectItemCaseSensitive(s->meta, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

const mt_st_tensor *mt_safetensors_find(mt_safetensors *const *files, int n_files, const char *name) {
    for (int i = 0; i < n_files; i++) {
        const mt_st_tensor *t = mt_safetensors_tensor_by_name(files[i], name);
        if (t) return t;
    }
    return NULL;
}

// ---- folders ----

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = mt_malloc(a + b + 2, "path");
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Reads a whole small file (the index); fails past `limit` bytes.
static mt_status read_small(const char *path, size_t limit, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return mt_fail(MT_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= limit) {
                free(buf);
                fclose(f);
                return mt_fail(MT_ERR_NOMEM, "%s is larger than %zu bytes", path, limit);
            }
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return mt_fail(MT_ERR_NOMEM, "cannot allocate %zu bytes to read %s", cap, path);
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return mt_fail(MT_ERR_IO, "error reading %s", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return MT_OK;
}

// The file names to open: from the index (validated to be plain names in the folder) or the listing.
static mt_status dir_file_names(const char *dir, char **names, int max, int *n, cJSON **index) {
    *n = 0;
    *index = NULL;
    char *ipath = path_join(dir, "model.safetensors.index.json");
    if (!ipath) return MT_ERR_NOMEM;
    if (access(ipath, F_OK) == 0) {
        char *text = NULL;
        size_t len = 0;
        mt_status s = read_small(ipath, MT_ST_MAX_HEADER, &text, &len);
        if (s != MT_OK) {
            free(ipath);
            return s;
        }
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        if (!cJSON_IsObject(wm)) {
            cJSON_Delete(root);
            s = mt_fail(MT_ERR_FORMAT, "%s: %s", ipath, root ? "no \"weight_map\" object" : "not valid JSON");
            free(ipath);
            return s;
        }
        *index = root;
        for (const cJSON *e = wm->child; e; e = e->next) {
            const char *f = cJSON_IsString(e) ? e->valuestring : NULL;
            if (!f || !*f || strchr(f, '/') || f[0] == '.') {
                s = mt_fail(MT_ERR_FORMAT, "%s: weight_map['%.80s'] is not a file name in the folder", ipath,
                            e->string);
                free(ipath);
                return s;
            }
            bool seen = false;
            for (int i = 0; i < *n && !seen; i++) seen = !strcmp(names[i], f);
            if (seen) continue;
            if (*n == max) {
                s = mt_fail(MT_ERR_UNSUPPORTED, "%s names more than %d weight files", ipath, max);
                free(ipath);
                return s;
            }
            names[(*n)++] = (char *)f; // points into the index, which the caller keeps
        }
        free(ipath);
        if (*n == 0) return mt_fail(MT_ERR_FORMAT, "%s: weight_map is empty", dir);
        return MT_OK;
    }
    free(ipath);

    DIR *d = opendir(dir);
    if (!d) return mt_fail(MT_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
    struct dirent *de;
    mt_status s = MT_OK;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        const char *ext = ".safetensors";
        if (l <= strlen(ext) || strcmp(de->d_name + l - strlen(ext), ext) || de->d_name[0] == '.') continue;
        if (*n == max) {
            s = mt_fail(MT_ERR_UNSUPPORTED, "%s has more than %d *.safetensors files", dir, max);
            break;
        }
        if (!(names[*n] = strdup(de->d_name))) {
            s = mt_fail(MT_ERR_NOMEM, "cannot copy a file name of %s", dir);
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (s == MT_OK && *n == 0) s = mt_fail(MT_ERR_IO, "no *.safetensors files in %s", dir);
    if (s != MT_OK) {
        for (int i = 0; i < *n; i++) free(names[i]);
        *n = 0;
        return s;
    }
    qsort(names, (size_t)*n, sizeof *names, cmp_str);
    return MT_OK;
}

static mt_status open_files(const char *dir, char **names, int n_names, const cJSON *index,
                            mt_safetensors **files, int *n_files) {
    for (int i = 0; i < n_names; i++) {
        char *p = path_join(dir, names[i]);
        if (!p) return MT_ERR_NOMEM;
        mt_status s = mt_safetensors_open(p, &files[i]);
        free(p);
        if (s != MT_OK) return s;
        *n_files = i + 1;
    }
    for (int i = 1; i < n_names; i++)
        for (int64_t j = 0; j < files[i]->n; j++) {
            const char *name = files[i]->tensors[j].name;
            for (int k = 0; k < i; k++)
                if (mt_safetensors_tensor_by_name(files[k], name))
                    return mt_fail(MT_ERR_FORMAT, "tensor '%.80s' is in both %s and %s", name, names[k],
                                   names[i]);
        }
    if (index) {
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
        for (const cJSON *e = wm->child; e; e = e->next) {
            int k = 0;
            while (k < n_names && strcmp(names[k], e->valuestring)) k++;
            if (!mt_safetensors_tensor_by_name(files[k], e->string))
                return mt_fail(MT_ERR_FORMAT, "index maps tensor '%.80s' to %s, which has no such tensor",
                               e->string, e->valuestring);
        }
    }
    return MT_OK;
}

mt_status mt_safetensors_open_dir(const char *dir, mt_safetensors **files, int max_files, int *n_files) {
    *n_files = 0;
    char **names = mt_calloc((size_t)(max_files > 0 ? max_files : 1), sizeof *names, "weight file names");
    if (!names) return MT_ERR_NOMEM;
    cJSON *index = NULL;
    int n_names = 0;
    mt_status s = dir_file_names(dir, names, max_files, &n_names, &index);
    if (s == MT_OK) s = open_files(dir, names, n_names, index, files, n_files);
    if (!index)
        for (int i = 0; i < n_names; i++) free(names[i]);
    cJSON_Delete(index);
    free(names);
    if (s != MT_OK) {
        for (int i = 0; i < *n_files; i++) mt_safetensors_close(files[i]);
        *n_files = 0;
    }
    return s;
}
