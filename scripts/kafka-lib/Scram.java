// Sets a user's SCRAM-SHA-512 password on a running cluster that scripts/kafka
// started, with Kafka's own admin client over its PLAINTEXT listener: what
// kafka-configs.sh --alter --add-config 'SCRAM-SHA-512=[password=...]' does,
// for rotating a password while clients run.
//
//   java -cp 'LIBS/*' Scram.java BOOTSTRAP USER PASSWORD
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;

public class Scram {
    /** Kafka's own default (and minimum) for SCRAM-SHA-512. */
    private static final int ITERATIONS = 4096;

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: Scram.java BOOTSTRAP USER PASSWORD");
            System.exit(2);
        }
        Properties properties = new Properties();
        properties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        ScramCredentialInfo info = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS);
        try (Admin admin = Admin.create(properties)) {
            admin.alterUserScramCredentials(List.of(new UserScramCredentialUpsertion(args[1], info, args[2])))
                .all().get(60, TimeUnit.SECONDS);
        }
    }
}
