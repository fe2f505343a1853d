// Creates topics on a cluster that scripts/kafka started, with Kafka's own
// admin client (run in Java's source-file mode on the cluster's class path):
//
//   java -cp 'LIBS/*' Topic.java BOOTSTRAP NAME[,NAME...] PARTITIONS REPLICATION [KEY=VALUE...]
//
// Several names make several topics alike in one call (one JVM start).
// KEY=VALUE pairs are topic configs (min.insync.replicas=2, ...). An existing
// topic is an error, as it is for kafka-topics.sh --create.
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;

public class Topic {
    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: Topic.java BOOTSTRAP NAME[,NAME...] PARTITIONS REPLICATION [KEY=VALUE...]");
            System.exit(2);
        }
        Map<String, String> configs = new HashMap<>();
        for (int i = 4; i < args.length; i++) {
            String[] pair = args[i].split("=", 2);
            if (pair.length != 2) {
                System.err.println("topic config must be KEY=VALUE: " + args[i]);
                System.exit(2);
            }
            configs.put(pair[0], pair[1]);
        }
        Properties properties = new Properties();
        properties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        int partitions = Integer.parseInt(args[2]);
        short replication = Short.parseShort(args[3]);
        List<NewTopic> topics = Arrays.stream(args[1].split(","))
            .map(name -> new NewTopic(name, partitions, replication).configs(configs))
            .toList();
        try (Admin admin = Admin.create(properties)) {
            admin.createTopics(topics).all().get(60, TimeUnit.SECONDS);
        }
    }
}
