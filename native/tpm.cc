// sigil_tpm: a thin ESAPI (tpm2-tss) binding for the TPM node attestor's collector.
//
// It returns TPM wire bytes (TPM2B_PUBLIC, TPM2B_PRIVATE, TPM2B_ATTEST, TPMT_SIGNATURE, ...),
// marshalled with Tss2_MU_*; all parsing of those bytes happens in TypeScript (src/tpm/).
//
// Threading: every TPM call runs on the libuv thread pool (Napi::AsyncWorker). An ESAPI context
// is not thread-safe, so each context has a mutex that an operation holds for its whole duration;
// the TypeScript wrapper additionally chains calls so they start in order.
//
// Handles: sessions and per-operation transient objects are flushed by RAII guards on every path,
// including errors. Two objects live as long as the context: the EK in use (a persistent handle,
// only closed in ESAPI, or a transient CreatePrimary result, flushed on close or when another EK
// is selected) and the loaded AK (flushed when another AK is loaded and on close).
//
// EK templates follow the TCG EK Credential Profile for TPM Family 2.0 (appendix B):
//   rsa       low range template L-1 (RSA 2048, SHA-256, AES-128-CFB, PolicyA = PolicySecret(EH))
//   ecc-p256  low range template L-2 (NIST P-256, SHA-256, AES-128-CFB, PolicyA)
//   ecc-p384  high range template H-3 (NIST P-384, SHA-384, AES-256-CFB, userWithAuth, PolicyB)
// Low range EKs have userWithAuth clear, so using them as a parent (Create, Load) or in
// ActivateCredential needs a policy session satisfying PolicySecret(TPM_RH_ENDORSEMENT). High range
// EKs set userWithAuth with an empty authValue, so an empty password authorises the USER role.

#include <napi.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace {

using Bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------------------------------------
// Errors

struct TpmError {
  std::string message;
  TSS2_RC rc;
  std::string op;
};

std::string Hex32(uint32_t v) {
  char b[16];
  snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

[[noreturn]] void FailRc(const std::string& op, TSS2_RC rc, const std::string& hint = "") {
  const char* decoded = Tss2_RC_Decode(rc);
  std::string msg = op + " failed: " + Hex32(rc) + " (" + (decoded ? decoded : "unknown") + ")";
  if (!hint.empty()) msg += "; " + hint;
  throw TpmError{msg, rc, op};
}

[[noreturn]] void Fail(const std::string& op, const std::string& message) { throw TpmError{message, 0, op}; }

void Check(TSS2_RC rc, const std::string& op) {
  if (rc != TSS2_RC_SUCCESS) FailRc(op, rc);
}

// Strip the layer bits to compare against TPM format-zero/one codes.
TSS2_RC TpmBase(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) != TPM2_RC_SUCCESS) return rc;  // not from the TPM itself
  if (rc & TPM2_RC_FMT1) return rc & (TPM2_RC_FMT1 | 0x3f);
  return rc & 0xfff;
}

// ---------------------------------------------------------------------------------------------
// ESAPI memory and handle guards

struct EsysFreeDeleter {
  void operator()(void* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFreeDeleter>;

// Flushes a transient object or session when it goes out of scope.
class FlushGuard {
 public:
  explicit FlushGuard(ESYS_CONTEXT* e) : esys_(e) {}
  ~FlushGuard() {
    if (h_ != ESYS_TR_NONE) Esys_FlushContext(esys_, h_);
  }
  FlushGuard(const FlushGuard&) = delete;
  FlushGuard& operator=(const FlushGuard&) = delete;
  ESYS_TR* out() { return &h_; }
  ESYS_TR get() const { return h_; }
  ESYS_TR release() {
    ESYS_TR h = h_;
    h_ = ESYS_TR_NONE;
    return h;
  }

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR h_ = ESYS_TR_NONE;
};

// Releases the ESAPI metadata of a persistent object or NV index (no TPM command).
class CloseGuard {
 public:
  explicit CloseGuard(ESYS_CONTEXT* e) : esys_(e) {}
  ~CloseGuard() {
    if (h_ != ESYS_TR_NONE) Esys_TR_Close(esys_, &h_);
  }
  CloseGuard(const CloseGuard&) = delete;
  CloseGuard& operator=(const CloseGuard&) = delete;
  ESYS_TR* out() { return &h_; }
  ESYS_TR get() const { return h_; }
  ESYS_TR release() {
    ESYS_TR h = h_;
    h_ = ESYS_TR_NONE;
    return h;
  }

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR h_ = ESYS_TR_NONE;
};

// ---------------------------------------------------------------------------------------------
// Marshalling helpers

template <typename T, TSS2_RC (*Fn)(const T*, uint8_t[], size_t, size_t*)>
Bytes Marshal(const T& v, const char* what) {
  Bytes out(sizeof(T) + 64);
  size_t off = 0;
  TSS2_RC rc = Fn(&v, out.data(), out.size(), &off);
  if (rc != TSS2_RC_SUCCESS) FailRc(std::string("marshal ") + what, rc);
  out.resize(off);
  return out;
}

template <typename T, TSS2_RC (*Fn)(const uint8_t[], size_t, size_t*, T*)>
T Unmarshal(const Bytes& in, const char* what) {
  T v;
  memset(&v, 0, sizeof v);
  size_t off = 0;
  TSS2_RC rc = Fn(in.data(), in.size(), &off, &v);
  if (rc != TSS2_RC_SUCCESS) FailRc(std::string("unmarshal ") + what, rc, "the bytes are not a valid " + std::string(what));
  if (off != in.size()) {
    Fail(std::string("unmarshal ") + what, std::string(what) + " has " + std::to_string(in.size() - off) + " trailing bytes");
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// EK templates (TCG EK Credential Profile, appendix B)

enum class EkAlg { Rsa = 0, EccP256 = 1, EccP384 = 2 };

const char* EkAlgName(EkAlg a) {
  switch (a) {
    case EkAlg::Rsa: return "rsa";
    case EkAlg::EccP256: return "ecc-p256";
    case EkAlg::EccP384: return "ecc-p384";
  }
  return "?";
}

// PolicyA (SHA-256): TPM2_PolicySecret(TPM_RH_ENDORSEMENT).
const uint8_t kPolicyASha256[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC,
                                    0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52,
                                    0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};
// PolicyB (SHA-384): the high-range EK authPolicy.
const uint8_t kPolicyBSha384[48] = {0xB2, 0x6E, 0x7D, 0x28, 0xD1, 0x1A, 0x50, 0xBC, 0x53, 0xD8, 0x82, 0xBC,
                                    0xF5, 0xFD, 0x3A, 0x1A, 0x07, 0x41, 0x48, 0xBB, 0x35, 0xD3, 0xB4, 0xE4,
                                    0xCB, 0x1C, 0x0A, 0xD9, 0xBD, 0xE4, 0x19, 0xCA, 0xCB, 0x47, 0xBA, 0x09,
                                    0x69, 0x96, 0x46, 0x15, 0x0F, 0x9F, 0xC0, 0x00, 0xF3, 0xF8, 0x0E, 0x12};

constexpr TPMA_OBJECT kEkLowAttrs = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                    TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;

TPM2B_PUBLIC EkTemplate(EkAlg alg) {
  TPM2B_PUBLIC t;
  memset(&t, 0, sizeof t);
  TPMT_PUBLIC& p = t.publicArea;
  switch (alg) {
    case EkAlg::Rsa:  // L-1
      p.type = TPM2_ALG_RSA;
      p.nameAlg = TPM2_ALG_SHA256;
      p.objectAttributes = kEkLowAttrs;
      p.authPolicy.size = sizeof kPolicyASha256;
      memcpy(p.authPolicy.buffer, kPolicyASha256, sizeof kPolicyASha256);
      p.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
      p.parameters.rsaDetail.symmetric.keyBits.aes = 128;
      p.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
      p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
      p.parameters.rsaDetail.keyBits = 2048;
      p.parameters.rsaDetail.exponent = 0;
      p.unique.rsa.size = 256;  // 256 zero bytes
      break;
    case EkAlg::EccP256:  // L-2
      p.type = TPM2_ALG_ECC;
      p.nameAlg = TPM2_ALG_SHA256;
      p.objectAttributes = kEkLowAttrs;
      p.authPolicy.size = sizeof kPolicyASha256;
      memcpy(p.authPolicy.buffer, kPolicyASha256, sizeof kPolicyASha256);
      p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
      p.parameters.eccDetail.symmetric.keyBits.aes = 128;
      p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
      p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
      p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
      p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
      p.unique.ecc.x.size = 32;  // 32 zero bytes each
      p.unique.ecc.y.size = 32;
      break;
    case EkAlg::EccP384:  // H-3
      p.type = TPM2_ALG_ECC;
      p.nameAlg = TPM2_ALG_SHA384;
      p.objectAttributes = kEkLowAttrs | TPMA_OBJECT_USERWITHAUTH;
      p.authPolicy.size = sizeof kPolicyBSha384;
      memcpy(p.authPolicy.buffer, kPolicyBSha384, sizeof kPolicyBSha384);
      p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
      p.parameters.eccDetail.symmetric.keyBits.aes = 256;
      p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
      p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
      p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384;
      p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
      p.unique.ecc.x.size = 0;  // high range: empty unique
      p.unique.ecc.y.size = 0;
      break;
  }
  return t;
}

// True when an existing object's public area is the given template (ignoring the unique field;
// an RSA exponent of 65537 equals the template's 0 = default).
bool MatchesTemplate(const TPMT_PUBLIC& have, const TPM2B_PUBLIC& tmpl) {
  TPMT_PUBLIC a = have;
  TPMT_PUBLIC b = tmpl.publicArea;
  memset(&a.unique, 0, sizeof a.unique);
  memset(&b.unique, 0, sizeof b.unique);
  if (a.type == TPM2_ALG_RSA && a.parameters.rsaDetail.exponent == 65537) a.parameters.rsaDetail.exponent = 0;
  Bytes ma = Marshal<TPMT_PUBLIC, Tss2_MU_TPMT_PUBLIC_Marshal>(a, "TPMT_PUBLIC");
  Bytes mb = Marshal<TPMT_PUBLIC, Tss2_MU_TPMT_PUBLIC_Marshal>(b, "TPMT_PUBLIC");
  return ma == mb;
}

// Persistent handles to look at first for each EK (TCG provisioning guidance; swtpm puts its
// P-384 EK at 0x81010016), before scanning the whole EK range 0x81010000..0x810100FF.
std::vector<TPM2_HANDLE> PreferredEkHandles(EkAlg alg) {
  switch (alg) {
    case EkAlg::Rsa: return {0x81010001};
    case EkAlg::EccP256: return {0x81010002};
    case EkAlg::EccP384: return {0x81010016};
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// AK templates

TPM2B_PUBLIC AkTemplate(bool ecc) {
  TPM2B_PUBLIC t;
  memset(&t, 0, sizeof t);
  TPMT_PUBLIC& p = t.publicArea;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;
  if (ecc) {
    p.type = TPM2_ALG_ECC;
    p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  } else {
    p.type = TPM2_ALG_RSA;
    p.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSASSA;
    p.parameters.rsaDetail.scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
    p.parameters.rsaDetail.keyBits = 2048;
    p.parameters.rsaDetail.exponent = 0;
  }
  return t;
}

// EK certificate NV indices, in the order readEkCertificate tries them.
const TPM2_HANDLE kEkCertIndices[] = {0x01c00002, 0x01c0000a, 0x01c00012, 0x01c00014, 0x01c00016,
                                      0x01c00018, 0x01c0001a, 0x01c0001c};

// ---------------------------------------------------------------------------------------------
// The context

class Tpm {
 public:
  std::mutex mu;

  ~Tpm() { CloseLocked(); }

  void Open(const std::string& conf) {
    TSS2_RC rc = Tss2_TctiLdr_Initialize(conf.c_str(), &tcti_);
    if (rc != TSS2_RC_SUCCESS) {
      tcti_ = nullptr;
      FailRc("Tss2_TctiLdr_Initialize(\"" + conf + "\")", rc,
             "check the TCTI string (device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P), that the TPM or simulator is "
             "reachable, and that the matching libtss2-tcti-* library is installed");
    }
    rc = Esys_Initialize(&esys_, tcti_, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      esys_ = nullptr;
      Tss2_TctiLdr_Finalize(&tcti_);
      FailRc("Esys_Initialize", rc);
    }
    try {
      // A freshly powered simulator needs TPM2_Startup; real TPMs and swtpm with startup-clear
      // answer TPM_RC_INITIALIZE to a second Startup, so only send it when the TPM asks for it.
      uint32_t v = 0;
      rc = GetProperty(TPM2_PT_MANUFACTURER, &v);
      if (rc != TSS2_RC_SUCCESS && TpmBase(rc) == TPM2_RC_INITIALIZE) {
        TSS2_RC s = Esys_Startup(esys_, TPM2_SU_CLEAR);
        if (s != TSS2_RC_SUCCESS && TpmBase(s) != TPM2_RC_INITIALIZE) FailRc("Esys_Startup", s);
        rc = GetProperty(TPM2_PT_MANUFACTURER, &v);
      }
      Check(rc, "Esys_GetCapability(TPM_PROPERTIES)");
      uint32_t nvMax = 0;
      if (GetProperty(TPM2_PT_NV_BUFFER_MAX, &nvMax) == TSS2_RC_SUCCESS && nvMax > 0) {
        nvBufferMax_ = std::min<uint32_t>(nvMax, TPM2_MAX_NV_BUFFER_SIZE);
      }
    } catch (...) {
      CloseLocked();
      throw;
    }
  }

  void EnsureOpen(const char* op) {
    if (esys_ == nullptr) Fail(op, std::string(op) + ": the TPM context is closed");
  }

  void CloseLocked() {
    if (esys_ != nullptr) {
      if (ak_ != ESYS_TR_NONE) Esys_FlushContext(esys_, ak_);
      ak_ = ESYS_TR_NONE;
      ReleaseEk();
      Esys_Finalize(&esys_);
      esys_ = nullptr;
    }
    if (tcti_ != nullptr) {
      Tss2_TctiLdr_Finalize(&tcti_);
      tcti_ = nullptr;
    }
  }

  // --- readEkCertificate
  bool ReadEkCertificate(uint32_t* index, Bytes* der) {
    EnsureOpen("readEkCertificate");
    std::vector<TPM2_HANDLE> present = ListHandles(0x01c00000, 0x01c00100);
    for (TPM2_HANDLE idx : kEkCertIndices) {
      if (std::find(present.begin(), present.end(), idx) == present.end()) continue;
      *der = NvReadAll(idx);
      *index = idx;
      return true;
    }
    return false;
  }

  // --- getEkPublic
  Bytes GetEkPublic(EkAlg alg) {
    EnsureOpen("getEkPublic");
    SelectEk(alg);
    return Marshal<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Marshal>(ekPublic_, "TPM2B_PUBLIC");
  }

  // --- createAk
  std::pair<Bytes, Bytes> CreateAk(bool ecc) {
    EnsureOpen("createAk");
    EnsureEk();
    FlushGuard session(esys_);
    ESYS_TR auth = EkAuthSession(&session, "createAk");
    TPM2B_SENSITIVE_CREATE inSensitive;
    memset(&inSensitive, 0, sizeof inSensitive);
    TPM2B_PUBLIC inPublic = AkTemplate(ecc);
    TPM2B_DATA outsideInfo;
    memset(&outsideInfo, 0, sizeof outsideInfo);
    TPML_PCR_SELECTION creationPcr;
    memset(&creationPcr, 0, sizeof creationPcr);
    TPM2B_PRIVATE* outPrivateRaw = nullptr;
    TPM2B_PUBLIC* outPublicRaw = nullptr;
    TPM2B_CREATION_DATA* creationDataRaw = nullptr;
    TPM2B_DIGEST* creationHashRaw = nullptr;
    TPMT_TK_CREATION* creationTicketRaw = nullptr;
    TSS2_RC rc = Esys_Create(esys_, ek_, auth, ESYS_TR_NONE, ESYS_TR_NONE, &inSensitive, &inPublic, &outsideInfo, &creationPcr,
                             &outPrivateRaw, &outPublicRaw, &creationDataRaw, &creationHashRaw, &creationTicketRaw);
    EsysPtr<TPM2B_PRIVATE> outPrivate(outPrivateRaw);
    EsysPtr<TPM2B_PUBLIC> outPublic(outPublicRaw);
    EsysPtr<TPM2B_CREATION_DATA> creationData(creationDataRaw);
    EsysPtr<TPM2B_DIGEST> creationHash(creationHashRaw);
    EsysPtr<TPMT_TK_CREATION> creationTicket(creationTicketRaw);
    Check(rc, "Esys_Create(AK)");
    return {Marshal<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Marshal>(*outPublic, "TPM2B_PUBLIC"),
            Marshal<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Marshal>(*outPrivate, "TPM2B_PRIVATE")};
  }

  // --- loadAk
  Bytes LoadAk(const Bytes& pubBytes, const Bytes& privBytes) {
    EnsureOpen("loadAk");
    TPM2B_PUBLIC pub = Unmarshal<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(pubBytes, "TPM2B_PUBLIC");
    TPM2B_PRIVATE priv = Unmarshal<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Unmarshal>(privBytes, "TPM2B_PRIVATE");
    EnsureEk();
    FlushGuard session(esys_);
    ESYS_TR auth = EkAuthSession(&session, "loadAk");
    FlushGuard obj(esys_);
    Check(Esys_Load(esys_, ek_, auth, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &pub, obj.out()), "Esys_Load(AK)");
    TPM2B_NAME* nameRaw = nullptr;
    Check(Esys_TR_GetName(esys_, obj.get(), &nameRaw), "Esys_TR_GetName(AK)");
    EsysPtr<TPM2B_NAME> name(nameRaw);
    Bytes out(name->name, name->name + name->size);
    if (ak_ != ESYS_TR_NONE) {
      Esys_FlushContext(esys_, ak_);
      ak_ = ESYS_TR_NONE;
    }
    ak_ = obj.release();
    return out;
  }

  // --- activateCredential
  Bytes ActivateCredential(const Bytes& blobBytes, const Bytes& secretBytes) {
    EnsureOpen("activateCredential");
    if (ak_ == ESYS_TR_NONE) Fail("activateCredential", "activateCredential: no AK is loaded (call loadAk first)");
    TPM2B_ID_OBJECT blob = Unmarshal<TPM2B_ID_OBJECT, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal>(blobBytes, "TPM2B_ID_OBJECT");
    TPM2B_ENCRYPTED_SECRET secret =
        Unmarshal<TPM2B_ENCRYPTED_SECRET, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal>(secretBytes, "TPM2B_ENCRYPTED_SECRET");
    EnsureEk();
    FlushGuard session(esys_);
    ESYS_TR ekAuth = EkAuthSession(&session, "activateCredential");
    TPM2B_DIGEST* certInfoRaw = nullptr;
    TSS2_RC rc = Esys_ActivateCredential(esys_, ak_, ek_, ESYS_TR_PASSWORD, ekAuth, ESYS_TR_NONE, &blob, &secret, &certInfoRaw);
    EsysPtr<TPM2B_DIGEST> certInfo(certInfoRaw);
    Check(rc, "Esys_ActivateCredential");
    return Bytes(certInfo->buffer, certInfo->buffer + certInfo->size);
  }

  // --- quote
  std::pair<Bytes, Bytes> Quote(const Bytes& selBytes, const Bytes& qualifying) {
    EnsureOpen("quote");
    if (ak_ == ESYS_TR_NONE) Fail("quote", "quote: no AK is loaded (call loadAk first)");
    TPML_PCR_SELECTION sel = Unmarshal<TPML_PCR_SELECTION, Tss2_MU_TPML_PCR_SELECTION_Unmarshal>(selBytes, "TPML_PCR_SELECTION");
    TPM2B_DATA qd;
    memset(&qd, 0, sizeof qd);
    if (qualifying.size() > sizeof qd.buffer) {
      Fail("quote", "quote: qualifyingData is " + std::to_string(qualifying.size()) + " bytes, at most " + std::to_string(sizeof qd.buffer) +
                        " allowed");
    }
    qd.size = static_cast<UINT16>(qualifying.size());
    if (!qualifying.empty()) memcpy(qd.buffer, qualifying.data(), qualifying.size());
    TPMT_SIG_SCHEME scheme;
    memset(&scheme, 0, sizeof scheme);
    scheme.scheme = TPM2_ALG_NULL;  // use the AK's own scheme
    TPM2B_ATTEST* quotedRaw = nullptr;
    TPMT_SIGNATURE* sigRaw = nullptr;
    TSS2_RC rc = Esys_Quote(esys_, ak_, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qd, &scheme, &sel, &quotedRaw, &sigRaw);
    EsysPtr<TPM2B_ATTEST> quoted(quotedRaw);
    EsysPtr<TPMT_SIGNATURE> sig(sigRaw);
    Check(rc, "Esys_Quote");
    return {Marshal<TPM2B_ATTEST, Tss2_MU_TPM2B_ATTEST_Marshal>(*quoted, "TPM2B_ATTEST"),
            Marshal<TPMT_SIGNATURE, Tss2_MU_TPMT_SIGNATURE_Marshal>(*sig, "TPMT_SIGNATURE")};
  }

  struct PcrValue {
    uint16_t hash;
    uint32_t index;
    Bytes value;
  };

  // --- pcrRead
  std::vector<PcrValue> PcrRead(const Bytes& selBytes) {
    EnsureOpen("pcrRead");
    TPML_PCR_SELECTION sel = Unmarshal<TPML_PCR_SELECTION, Tss2_MU_TPML_PCR_SELECTION_Unmarshal>(selBytes, "TPML_PCR_SELECTION");
    // What was asked for, in selection order.
    std::vector<std::pair<uint16_t, uint32_t>> want;
    for (UINT32 i = 0; i < sel.count; i++) {
      const TPMS_PCR_SELECTION& s = sel.pcrSelections[i];
      for (UINT32 b = 0; b < s.sizeofSelect; b++) {
        for (int bit = 0; bit < 8; bit++) {
          if (s.pcrSelect[b] & (1u << bit)) want.emplace_back(s.hash, b * 8 + bit);
        }
      }
    }
    std::map<std::pair<uint16_t, uint32_t>, Bytes> got;
    TPML_PCR_SELECTION remaining = sel;
    // A TPM returns at most 8 digests per call; each round clears what it returned.
    for (int round = 0; round < 1024; round++) {
      bool any = false;
      for (UINT32 i = 0; i < remaining.count; i++)
        for (UINT32 b = 0; b < remaining.pcrSelections[i].sizeofSelect; b++) any = any || remaining.pcrSelections[i].pcrSelect[b] != 0;
      if (!any) break;
      UINT32 counter = 0;
      TPML_PCR_SELECTION* outSelRaw = nullptr;
      TPML_DIGEST* valuesRaw = nullptr;
      TSS2_RC rc = Esys_PCR_Read(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &remaining, &counter, &outSelRaw, &valuesRaw);
      EsysPtr<TPML_PCR_SELECTION> outSel(outSelRaw);
      EsysPtr<TPML_DIGEST> values(valuesRaw);
      Check(rc, "Esys_PCR_Read");
      UINT32 v = 0;
      for (UINT32 i = 0; i < outSel->count; i++) {
        const TPMS_PCR_SELECTION& s = outSel->pcrSelections[i];
        for (UINT32 b = 0; b < s.sizeofSelect; b++) {
          for (int bit = 0; bit < 8; bit++) {
            if (!(s.pcrSelect[b] & (1u << bit))) continue;
            if (v >= values->count) Fail("Esys_PCR_Read", "TPM2_PCR_Read returned fewer digests than its selection names");
            const TPM2B_DIGEST& d = values->digests[v++];
            got[{s.hash, b * 8 + bit}] = Bytes(d.buffer, d.buffer + d.size);
            for (UINT32 j = 0; j < remaining.count; j++) {
              TPMS_PCR_SELECTION& r = remaining.pcrSelections[j];
              if (r.hash == s.hash && b < r.sizeofSelect) r.pcrSelect[b] &= static_cast<BYTE>(~(1u << bit));
            }
          }
        }
      }
      if (v == 0) {
        std::string which;
        for (UINT32 i = 0; i < remaining.count; i++) {
          bool left = false;
          for (UINT32 b = 0; b < remaining.pcrSelections[i].sizeofSelect; b++) left = left || remaining.pcrSelections[i].pcrSelect[b] != 0;
          if (left) which += (which.empty() ? "" : ", ") + Hex32(remaining.pcrSelections[i].hash);
        }
        Fail("Esys_PCR_Read", "TPM2_PCR_Read returned no values for PCR bank(s) " + which +
                                  ": the bank is not active on this TPM or an index is out of range");
      }
    }
    std::vector<PcrValue> out;
    out.reserve(want.size());
    for (const auto& w : want) {
      auto it = got.find(w);
      if (it == got.end()) Fail("Esys_PCR_Read", "PCR " + std::to_string(w.second) + " of bank " + Hex32(w.first) + " was not returned");
      out.push_back(PcrValue{w.first, w.second, it->second});
    }
    return out;
  }

  // --- transient handles currently in the TPM (diagnostics for leak tests)
  std::vector<TPM2_HANDLE> TransientHandles() {
    EnsureOpen("transientHandles");
    return ListHandles(TPM2_TRANSIENT_FIRST, TPM2_TRANSIENT_LAST + 1);
  }

 private:
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  uint32_t nvBufferMax_ = 512;

  ESYS_TR ek_ = ESYS_TR_NONE;
  bool ekTransient_ = false;
  bool ekSelected_ = false;
  EkAlg ekAlg_ = EkAlg::Rsa;
  TPM2B_PUBLIC ekPublic_{};
  ESYS_TR ak_ = ESYS_TR_NONE;

  TSS2_RC GetProperty(TPM2_PT prop, uint32_t* value) {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* dataRaw = nullptr;
    TSS2_RC rc = Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES, prop, 1, &more, &dataRaw);
    EsysPtr<TPMS_CAPABILITY_DATA> data(dataRaw);
    if (rc != TSS2_RC_SUCCESS) return rc;
    const TPML_TAGGED_TPM_PROPERTY& props = data->data.tpmProperties;
    if (props.count >= 1 && props.tpmProperty[0].property == prop) *value = props.tpmProperty[0].value;
    return TSS2_RC_SUCCESS;
  }

  // Handles in [first, end) that exist in the TPM.
  std::vector<TPM2_HANDLE> ListHandles(TPM2_HANDLE first, TPM2_HANDLE end) {
    std::vector<TPM2_HANDLE> out;
    TPM2_HANDLE next = first;
    for (int guard = 0; guard < 4096 && next < end; guard++) {
      TPMI_YES_NO more = TPM2_NO;
      TPMS_CAPABILITY_DATA* dataRaw = nullptr;
      TSS2_RC rc = Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, next, TPM2_MAX_CAP_HANDLES, &more,
                                      &dataRaw);
      EsysPtr<TPMS_CAPABILITY_DATA> data(dataRaw);
      Check(rc, "Esys_GetCapability(HANDLES " + Hex32(next) + ")");
      const TPML_HANDLE& hs = data->data.handles;
      if (hs.count == 0) break;
      bool past = false;
      for (UINT32 i = 0; i < hs.count; i++) {
        if (hs.handle[i] >= end) {
          past = true;
          break;
        }
        if (hs.handle[i] >= first) out.push_back(hs.handle[i]);
      }
      if (past || more != TPM2_YES) break;
      next = hs.handle[hs.count - 1] + 1;
    }
    return out;
  }

  Bytes NvReadAll(TPM2_HANDLE index) {
    CloseGuard nv(esys_);
    Check(Esys_TR_FromTPMPublic(esys_, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nv.out()), "Esys_TR_FromTPMPublic(" + Hex32(index) + ")");
    TPM2B_NV_PUBLIC* nvPubRaw = nullptr;
    TPM2B_NAME* nvNameRaw = nullptr;
    TSS2_RC rc = Esys_NV_ReadPublic(esys_, nv.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nvPubRaw, &nvNameRaw);
    EsysPtr<TPM2B_NV_PUBLIC> nvPub(nvPubRaw);
    EsysPtr<TPM2B_NAME> nvName(nvNameRaw);
    Check(rc, "Esys_NV_ReadPublic(" + Hex32(index) + ")");
    const TPMA_NV attrs = nvPub->nvPublic.attributes;
    const uint32_t size = nvPub->nvPublic.dataSize;
    // EK certificate indices carry AUTHREAD with an empty authValue; fall back to owner auth.
    ESYS_TR authHandle;
    if (attrs & TPMA_NV_AUTHREAD) {
      authHandle = nv.get();
    } else if (attrs & TPMA_NV_OWNERREAD) {
      authHandle = ESYS_TR_RH_OWNER;
    } else {
      Fail("readEkCertificate", "NV index " + Hex32(index) + " is readable neither with its own auth nor with owner auth");
    }
    Bytes out;
    out.reserve(size);
    uint32_t off = 0;
    while (off < size) {
      const uint32_t chunk = std::min<uint32_t>(nvBufferMax_, size - off);
      TPM2B_MAX_NV_BUFFER* dataRaw = nullptr;
      rc = Esys_NV_Read(esys_, authHandle, nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, static_cast<UINT16>(chunk),
                        static_cast<UINT16>(off), &dataRaw);
      EsysPtr<TPM2B_MAX_NV_BUFFER> data(dataRaw);
      Check(rc, "Esys_NV_Read(" + Hex32(index) + ", offset " + std::to_string(off) + ")");
      if (data->size == 0 || data->size > chunk) Fail("Esys_NV_Read", "TPM2_NV_Read returned " + std::to_string(data->size) + " bytes for a " + std::to_string(chunk) + "-byte read");
      out.insert(out.end(), data->buffer, data->buffer + data->size);
      off += data->size;
    }
    return out;
  }

  void ReleaseEk() {
    if (ek_ != ESYS_TR_NONE) {
      if (ekTransient_) {
        Esys_FlushContext(esys_, ek_);
      } else {
        Esys_TR_Close(esys_, &ek_);
      }
    }
    ek_ = ESYS_TR_NONE;
    ekTransient_ = false;
    ekSelected_ = false;
  }

  // The EK used as AK parent when the caller has not chosen one with getEkPublic: the one whose
  // certificate readEkCertificate would return first, else RSA.
  void EnsureEk() {
    if (ekSelected_) return;
    std::vector<TPM2_HANDLE> present = ListHandles(0x01c00000, 0x01c00100);
    auto has = [&](TPM2_HANDLE h) { return std::find(present.begin(), present.end(), h) != present.end(); };
    EkAlg alg = EkAlg::Rsa;
    if (has(0x01c00002)) alg = EkAlg::Rsa;
    else if (has(0x01c0000a)) alg = EkAlg::EccP256;
    else if (has(0x01c00016)) alg = EkAlg::EccP384;
    SelectEk(alg);
  }

  void SelectEk(EkAlg alg) {
    if (ekSelected_ && ekAlg_ == alg) return;
    ReleaseEk();
    const TPM2B_PUBLIC tmpl = EkTemplate(alg);
    // 1. A persistent EK made from the same template.
    std::vector<TPM2_HANDLE> persistent = ListHandles(0x81010000, 0x81010100);
    std::vector<TPM2_HANDLE> order = PreferredEkHandles(alg);
    for (TPM2_HANDLE h : persistent)
      if (std::find(order.begin(), order.end(), h) == order.end()) order.push_back(h);
    for (TPM2_HANDLE h : order) {
      if (std::find(persistent.begin(), persistent.end(), h) == persistent.end()) continue;
      CloseGuard tr(esys_);
      if (Esys_TR_FromTPMPublic(esys_, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, tr.out()) != TSS2_RC_SUCCESS) continue;
      TPM2B_PUBLIC* pubRaw = nullptr;
      TPM2B_NAME* nameRaw = nullptr;
      TPM2B_NAME* qnameRaw = nullptr;
      TSS2_RC rc = Esys_ReadPublic(esys_, tr.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pubRaw, &nameRaw, &qnameRaw);
      EsysPtr<TPM2B_PUBLIC> pub(pubRaw);
      EsysPtr<TPM2B_NAME> name(nameRaw);
      EsysPtr<TPM2B_NAME> qname(qnameRaw);
      if (rc != TSS2_RC_SUCCESS) continue;
      if (!MatchesTemplate(pub->publicArea, tmpl)) continue;
      ek_ = tr.release();
      ekTransient_ = false;
      ekPublic_ = *pub;
      ekAlg_ = alg;
      ekSelected_ = true;
      return;
    }
    // 2. Re-create it from the template under the endorsement hierarchy (deterministic).
    TPM2B_SENSITIVE_CREATE inSensitive;
    memset(&inSensitive, 0, sizeof inSensitive);
    TPM2B_DATA outsideInfo;
    memset(&outsideInfo, 0, sizeof outsideInfo);
    TPML_PCR_SELECTION creationPcr;
    memset(&creationPcr, 0, sizeof creationPcr);
    FlushGuard obj(esys_);
    TPM2B_PUBLIC* outPublicRaw = nullptr;
    TPM2B_CREATION_DATA* creationDataRaw = nullptr;
    TPM2B_DIGEST* creationHashRaw = nullptr;
    TPMT_TK_CREATION* creationTicketRaw = nullptr;
    TSS2_RC rc = Esys_CreatePrimary(esys_, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &inSensitive, &tmpl,
                                    &outsideInfo, &creationPcr, obj.out(), &outPublicRaw, &creationDataRaw, &creationHashRaw,
                                    &creationTicketRaw);
    EsysPtr<TPM2B_PUBLIC> outPublic(outPublicRaw);
    EsysPtr<TPM2B_CREATION_DATA> creationData(creationDataRaw);
    EsysPtr<TPM2B_DIGEST> creationHash(creationHashRaw);
    EsysPtr<TPMT_TK_CREATION> creationTicket(creationTicketRaw);
    if (rc != TSS2_RC_SUCCESS) {
      FailRc(std::string("Esys_CreatePrimary(EK ") + EkAlgName(alg) + ")", rc,
             TpmBase(rc) == TPM2_RC_BAD_AUTH || TpmBase(rc) == TPM2_RC_AUTH_FAIL
                 ? "the endorsement hierarchy has a password; Sigil expects it empty"
                 : "");
    }
    ekPublic_ = *outPublic;
    ek_ = obj.release();
    ekTransient_ = true;
    ekAlg_ = alg;
    ekSelected_ = true;
  }

  // The authorisation for using the EK in the USER role: an empty password when the EK has
  // userWithAuth (high range templates), else a policy session with PolicySecret(TPM_RH_ENDORSEMENT).
  ESYS_TR EkAuthSession(FlushGuard* session, const char* op) {
    if (ekPublic_.publicArea.objectAttributes & TPMA_OBJECT_USERWITHAUTH) return ESYS_TR_PASSWORD;
    TPMT_SYM_DEF sym;
    memset(&sym, 0, sizeof sym);
    sym.algorithm = TPM2_ALG_NULL;
    Check(Esys_StartAuthSession(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &sym,
                                ekPublic_.publicArea.nameAlg, session->out()),
          std::string("Esys_StartAuthSession(") + op + ")");
    TPM2B_NONCE nonceTpm;
    memset(&nonceTpm, 0, sizeof nonceTpm);
    TPM2B_DIGEST cpHash;
    memset(&cpHash, 0, sizeof cpHash);
    TPM2B_NONCE policyRef;
    memset(&policyRef, 0, sizeof policyRef);
    TPM2B_TIMEOUT* timeoutRaw = nullptr;
    TPMT_TK_AUTH* ticketRaw = nullptr;
    TSS2_RC rc = Esys_PolicySecret(esys_, ESYS_TR_RH_ENDORSEMENT, session->get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &nonceTpm,
                                   &cpHash, &policyRef, 0, &timeoutRaw, &ticketRaw);
    EsysPtr<TPM2B_TIMEOUT> timeout(timeoutRaw);
    EsysPtr<TPMT_TK_AUTH> ticket(ticketRaw);
    Check(rc, std::string("Esys_PolicySecret(TPM_RH_ENDORSEMENT) for ") + op);
    return session->get();
  }
};

// ---------------------------------------------------------------------------------------------
// N-API glue

struct AddonData {
  Napi::FunctionReference handleCtor;
};

Napi::Error ToJsError(Napi::Env env, const TpmError& e) {
  Napi::Error err = Napi::Error::New(env, e.message);
  err.Set("rc", Napi::Number::New(env, e.rc));
  err.Set("op", Napi::String::New(env, e.op));
  return err;
}

// Runs `work` on the thread pool with the context locked; `done` turns the result into JS values.
class OpWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<std::function<Napi::Value(Napi::Env)>(Tpm&)>;

  OpWorker(Napi::Env env, std::shared_ptr<Tpm> tpm, const char* name, Work work)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), tpm_(std::move(tpm)), work_(std::move(work)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    std::lock_guard<std::mutex> lock(tpm_->mu);
    try {
      build_ = work_(*tpm_);
    } catch (const TpmError& e) {
      failed_ = true;
      error_ = e;
    } catch (const std::exception& e) {
      failed_ = true;
      error_ = TpmError{std::string("internal error: ") + e.what(), 0, "internal"};
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (failed_) {
      deferred_.Reject(ToJsError(env, error_).Value());
      return;
    }
    try {
      deferred_.Resolve(build_(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Tpm> tpm_;
  Work work_;
  std::function<Napi::Value(Napi::Env)> build_;
  bool failed_ = false;
  TpmError error_{"", 0, ""};
};

Napi::Buffer<uint8_t> ToBuffer(Napi::Env env, const Bytes& b) { return Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size()); }

Bytes BufferArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a Buffer");
  auto b = info[i].As<Napi::Buffer<uint8_t>>();
  return Bytes(b.Data(), b.Data() + b.Length());
}

class TpmHandle : public Napi::ObjectWrap<TpmHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TpmHandle",
                       {
                           InstanceMethod<&TpmHandle::ReadEkCertificate>("readEkCertificate"),
                           InstanceMethod<&TpmHandle::GetEkPublic>("getEkPublic"),
                           InstanceMethod<&TpmHandle::CreateAk>("createAk"),
                           InstanceMethod<&TpmHandle::LoadAk>("loadAk"),
                           InstanceMethod<&TpmHandle::ActivateCredential>("activateCredential"),
                           InstanceMethod<&TpmHandle::Quote>("quote"),
                           InstanceMethod<&TpmHandle::PcrRead>("pcrRead"),
                           InstanceMethod<&TpmHandle::TransientHandles>("transientHandles"),
                           InstanceMethod<&TpmHandle::Close>("close"),
                       });
  }

  TpmHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TpmHandle>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "TpmHandle cannot be constructed directly; use open()");
    }
    auto* sp = info[0].As<Napi::External<std::shared_ptr<Tpm>>>().Data();
    tpm_ = *sp;
  }

 private:
  std::shared_ptr<Tpm> tpm_;

  Napi::Value Run(const Napi::CallbackInfo& info, const char* name, OpWorker::Work work) {
    auto* w = new OpWorker(info.Env(), tpm_, name, std::move(work));
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value ReadEkCertificate(const Napi::CallbackInfo& info) {
    return Run(info, "sigil.tpm.readEkCertificate", [](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      uint32_t index = 0;
      Bytes der;
      const bool found = t.ReadEkCertificate(&index, &der);
      return [found, index, der](Napi::Env env) -> Napi::Value {
        if (!found) return env.Null();
        Napi::Object o = Napi::Object::New(env);
        o.Set("nvIndex", Napi::Number::New(env, index));
        o.Set("der", ToBuffer(env, der));
        return o;
      };
    });
  }

  Napi::Value GetEkPublic(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "getEkPublic(alg): alg must be a string");
    const std::string a = info[0].As<Napi::String>().Utf8Value();
    EkAlg alg;
    if (a == "rsa") alg = EkAlg::Rsa;
    else if (a == "ecc-p256") alg = EkAlg::EccP256;
    else if (a == "ecc-p384") alg = EkAlg::EccP384;
    else throw Napi::TypeError::New(info.Env(), "getEkPublic(alg): alg must be 'rsa', 'ecc-p256' or 'ecc-p384', got '" + a + "'");
    return Run(info, "sigil.tpm.getEkPublic", [alg](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      Bytes pub = t.GetEkPublic(alg);
      return [pub](Napi::Env env) -> Napi::Value { return ToBuffer(env, pub); };
    });
  }

  Napi::Value CreateAk(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "createAk(alg): alg must be a string");
    const std::string a = info[0].As<Napi::String>().Utf8Value();
    if (a != "rsa" && a != "ecc") throw Napi::TypeError::New(info.Env(), "createAk(alg): alg must be 'rsa' or 'ecc', got '" + a + "'");
    const bool ecc = a == "ecc";
    return Run(info, "sigil.tpm.createAk", [ecc](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      auto r = t.CreateAk(ecc);
      return [r](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("public", ToBuffer(env, r.first));
        o.Set("private", ToBuffer(env, r.second));
        return o;
      };
    });
  }

  Napi::Value LoadAk(const Napi::CallbackInfo& info) {
    Bytes pub = BufferArg(info, 0, "loadAk: public");
    Bytes priv = BufferArg(info, 1, "loadAk: private");
    return Run(info, "sigil.tpm.loadAk", [pub, priv](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      Bytes name = t.LoadAk(pub, priv);
      return [name](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", ToBuffer(env, name));
        return o;
      };
    });
  }

  Napi::Value ActivateCredential(const Napi::CallbackInfo& info) {
    Bytes blob = BufferArg(info, 0, "activateCredential: credentialBlob");
    Bytes secret = BufferArg(info, 1, "activateCredential: encryptedSecret");
    return Run(info, "sigil.tpm.activateCredential", [blob, secret](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      Bytes certInfo = t.ActivateCredential(blob, secret);
      return [certInfo](Napi::Env env) -> Napi::Value { return ToBuffer(env, certInfo); };
    });
  }

  Napi::Value Quote(const Napi::CallbackInfo& info) {
    Bytes sel = BufferArg(info, 0, "quote: pcrSelection");
    Bytes qd = BufferArg(info, 1, "quote: qualifyingData");
    return Run(info, "sigil.tpm.quote", [sel, qd](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      auto r = t.Quote(sel, qd);
      return [r](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("attest", ToBuffer(env, r.first));
        o.Set("signature", ToBuffer(env, r.second));
        return o;
      };
    });
  }

  Napi::Value PcrRead(const Napi::CallbackInfo& info) {
    Bytes sel = BufferArg(info, 0, "pcrRead: pcrSelection");
    return Run(info, "sigil.tpm.pcrRead", [sel](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      auto values = t.PcrRead(sel);
      return [values](Napi::Env env) -> Napi::Value {
        Napi::Array arr = Napi::Array::New(env, values.size());
        for (size_t i = 0; i < values.size(); i++) {
          Napi::Object o = Napi::Object::New(env);
          o.Set("hashAlg", Napi::Number::New(env, values[i].hash));
          o.Set("index", Napi::Number::New(env, values[i].index));
          o.Set("value", ToBuffer(env, values[i].value));
          arr.Set(static_cast<uint32_t>(i), o);
        }
        return arr;
      };
    });
  }

  Napi::Value TransientHandles(const Napi::CallbackInfo& info) {
    return Run(info, "sigil.tpm.transientHandles", [](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      auto hs = t.TransientHandles();
      return [hs](Napi::Env env) -> Napi::Value {
        Napi::Array arr = Napi::Array::New(env, hs.size());
        for (size_t i = 0; i < hs.size(); i++) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, hs[i]));
        return arr;
      };
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    return Run(info, "sigil.tpm.close", [](Tpm& t) -> std::function<Napi::Value(Napi::Env)> {
      t.CloseLocked();
      return [](Napi::Env env) -> Napi::Value { return env.Undefined(); };
    });
  }
};

// open(tcti: string): Promise<TpmHandle>
class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, std::string conf)
      : Napi::AsyncWorker(env, "sigil.tpm.open"), deferred_(Napi::Promise::Deferred::New(env)), conf_(std::move(conf)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    auto t = std::make_shared<Tpm>();
    try {
      std::lock_guard<std::mutex> lock(t->mu);
      t->Open(conf_);
      tpm_ = t;
    } catch (const TpmError& e) {
      failed_ = true;
      error_ = e;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (failed_) {
      deferred_.Reject(ToJsError(env, error_).Value());
      return;
    }
    AddonData* data = env.GetInstanceData<AddonData>();
    std::shared_ptr<Tpm> holder = tpm_;
    Napi::Object h = data->handleCtor.New({Napi::External<std::shared_ptr<Tpm>>::New(env, &holder)});
    deferred_.Resolve(h);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string conf_;
  std::shared_ptr<Tpm> tpm_;
  bool failed_ = false;
  TpmError error_{"", 0, ""};
};

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "open(tcti): tcti must be a string");
  std::string conf = info[0].As<Napi::String>().Utf8Value();
  if (conf.empty() || conf.size() > 4096 || conf.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(env, "open(tcti): tcti must be a non-empty TCTI config string such as device:/dev/tpmrm0");
  }
  auto* w = new OpenWorker(env, std::move(conf));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value DecodeRc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "decodeRc(rc: number)");
  const uint32_t rc = info[0].As<Napi::Number>().Uint32Value();
  const char* d = Tss2_RC_Decode(rc);
  return Napi::String::New(env, d ? d : "unknown");
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // tpm2-tss logs failures to stderr by default (e.g. every probe of an absent NV index).
  // Errors reach the caller decoded; keep the library quiet unless the user asked for logs.
  setenv("TSS2_LOG", "all+NONE", 0);
  auto* data = new AddonData();
  data->handleCtor = Napi::Persistent(TpmHandle::Define(env));
  env.SetInstanceData<AddonData>(data);
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("decodeRc", Napi::Function::New(env, DecodeRc, "decodeRc"));
  return exports;
}

}  // namespace

NODE_API_MODULE(sigil_tpm, Init)
