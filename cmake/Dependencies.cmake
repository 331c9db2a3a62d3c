# Every third-party dependency, found as Debian installs it (scripts/install-deps.sh).
# All are required: a missing one stops the configure step with its name.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
find_package(Gloo CONFIG REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
pkg_check_modules(LAPACKE REQUIRED IMPORTED_TARGET lapacke)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
if(SHRINKRAY_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()
if(SHRINKRAY_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()
find_program(PROTOC_GRPC_PLUGIN grpc_cpp_plugin REQUIRED)

message(STATUS "shrinkray deps: absl ${absl_VERSION}, protobuf ${Protobuf_VERSION}, gRPC ${gRPC_VERSION}, "
               "prometheus-cpp ${prometheus-cpp_VERSION}, gloo ${Gloo_VERSION}, sqlite ${SQLite3_VERSION}, "
               "openblas ${OPENBLAS_VERSION}, pcre2 ${PCRE2_VERSION}, utf8proc ${UTF8PROC_VERSION}")
