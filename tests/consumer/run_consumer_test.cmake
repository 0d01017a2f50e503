# ctest driver: install gquant into a scratch prefix, build tests/consumer
# against it with find_package(gquant), and run the result.
# Inputs: GQUANT_BINARY_DIR, CONSUMER_SOURCE_DIR, WORK_DIR, CMAKE_BUILD_TYPE.
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${what}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

run_step("install" ${CMAKE_COMMAND} --install "${GQUANT_BINARY_DIR}" --prefix "${prefix}")
if(NOT EXISTS "${prefix}/include/gquant/status.h" OR NOT EXISTS "${prefix}/lib/cmake/gquant/gquantConfig.cmake")
  message(FATAL_ERROR "install tree lacks headers or the CMake package")
endif()
run_step("configure consumer" ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
         -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE})
run_step("build consumer" ${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_step("run consumer" "${WORK_DIR}/build/consumer" "${WORK_DIR}")
message(STATUS "${step_output}")
