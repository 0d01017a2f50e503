# Generates bundled_recipes.cc: every recipes/*.json as a string constant,
# looked up by file stem (recipe.h: BundledRecipeJson).
file(GLOB GQUANT_RECIPE_FILES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/recipes/*.json)
set(GQUANT_BUNDLED_RECIPE_ENTRIES "")
foreach(recipe_file IN LISTS GQUANT_RECIPE_FILES)
  get_filename_component(recipe_name ${recipe_file} NAME_WE)
  file(READ ${recipe_file} recipe_json)
  string(APPEND GQUANT_BUNDLED_RECIPE_ENTRIES
         "    {\"${recipe_name}\", R\"gquant_recipe(${recipe_json})gquant_recipe\"},\n")
endforeach()
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/src/bundled_recipes.cc.in
               ${CMAKE_CURRENT_BINARY_DIR}/bundled_recipes.cc @ONLY)
