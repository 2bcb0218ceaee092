package dev.absync.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/**
 * Stands in for the build step of Apicurio's config-index extension, whose deployment jar is not on
 * Maven Central: the registry then has no dynamically configurable properties (none are needed here).
 */
public class DynamicConfigList {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(List.of());
    }
}
