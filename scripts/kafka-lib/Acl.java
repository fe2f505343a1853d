// Grants or takes back ACLs on a cluster that scripts/kafka started with a
// secured listener, with Kafka's own admin client (run in Java's source-file
// mode on the cluster's class path) over its PLAINTEXT listener, whose
// clients are super users:
//
//   java -cp 'LIBS/*' Acl.java BOOTSTRAP add|remove PRINCIPAL RESOURCE=OPERATION[,...]...
//
// PRINCIPAL is Kafka's form (User:bridge, User:CN=bridge). A RESOURCE is
// topic:NAME, group:NAME or cluster; an OPERATION one of Kafka's AclOperation
// names (write, describe, idempotent_write, read, ...), case-insensitive. The
// operations are allowed on their resource from any host, what
// kafka-acls.sh --add --allow-principal does; `remove` deletes exactly those
// bindings. Several resources in one call: one JVM start.
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Acl {
    public static void main(String[] args) throws Exception {
        if (args.length < 4 || !(args[1].equals("add") || args[1].equals("remove"))) {
            System.err.println("usage: Acl.java BOOTSTRAP add|remove PRINCIPAL RESOURCE=OPERATION[,...]...");
            System.exit(2);
        }
        String principal = args[2];
        List<AclBinding> bindings = new ArrayList<>();
        for (String grant : Arrays.copyOfRange(args, 3, args.length)) {
            String[] parts = grant.split("=", 2);
            if (parts.length != 2) {
                System.err.println("a grant is RESOURCE=OPERATION[,...], not " + grant);
                System.exit(2);
            }
            ResourcePattern resource = pattern(parts[0]);
            for (String name : parts[1].split(",")) {
                AclOperation operation = AclOperation.fromString(name.toUpperCase(Locale.ROOT));
                if (operation == AclOperation.UNKNOWN || operation == AclOperation.ANY) {
                    System.err.println("not an ACL operation: " + name);
                    System.exit(2);
                }
                AccessControlEntry entry =
                    new AccessControlEntry(principal, "*", operation, AclPermissionType.ALLOW);
                bindings.add(new AclBinding(resource, entry));
            }
        }
        Properties properties = new Properties();
        properties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        try (Admin admin = Admin.create(properties)) {
            if (args[1].equals("add")) {
                admin.createAcls(bindings).all().get(60, TimeUnit.SECONDS);
            } else {
                List<AclBindingFilter> filters = bindings.stream().map(AclBinding::toFilter).toList();
                admin.deleteAcls(filters).all().get(60, TimeUnit.SECONDS);
            }
        }
    }

    private static ResourcePattern pattern(String resource) {
        if (resource.equals("cluster")) {
            return new ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL);
        }
        String[] kind = resource.split(":", 2);
        if (kind.length == 2 && kind[0].equals("topic")) {
            return new ResourcePattern(ResourceType.TOPIC, kind[1], PatternType.LITERAL);
        }
        if (kind.length == 2 && kind[0].equals("group")) {
            return new ResourcePattern(ResourceType.GROUP, kind[1], PatternType.LITERAL);
        }
        System.err.println("a resource is topic:NAME, group:NAME or cluster, not " + resource);
        System.exit(2);
        return null;
    }
}
